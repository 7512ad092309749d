/*
 * Memory, as Mini-OS's arch/x86/mm.c and mm.c for a PV guest.
 *
 * Xen's bootstrap tables map the image and the start-of-day data up to a 4 MiB boundary. build_pagetable
 * extends the 1:1 mapping (VA == pseudo-physical address, we link at 0) over all free RAM: page-table
 * frames come from the first free pfns, each made a page table the Xen way (new_pt_frame: zero it while
 * it is still writable, remap it read-only with mmu_update, pin it with MMUEXT_PIN_Ln_TABLE, then hook
 * it into its parent), and the leaf entries go in mmu_update batches of one L1's worth. Then page 0 is
 * unmapped (NULL dereferences fault) and the text and rodata made read-only.
 *
 * Free pages are handed out by a small page allocator (Mini-OS has a buddy allocator; a bitmap with
 * aligned power-of-two runs behaves the same for our needs), and malloc() is a size-class allocator on
 * top of it. Frames we do not own a pfn for (grant table frames) are mapped on demand above 512 GiB.
 */
#include "minios.h"

unsigned long *phys_to_machine_mapping;
pgentry_t *pt_base;
static unsigned long first_free_pfn, last_free_pfn;
extern char _text[], _etext[], _edata[], _end[], shared_info[];

void arch_mm_preinit(struct start_info *si)
{
    phys_to_machine_mapping = (unsigned long *)si->mfn_list;
    pt_base = (pgentry_t *)si->pt_base;
    /* The boot stack after the page tables is ours to reuse: we run on our own stack. */
    first_free_pfn = PFN_UP(to_phys(pt_base)) + si->nr_pt_frames;
    last_free_pfn = si->nr_pages;
}

static const pgentry_t pt_prot[4] = { L1_PROT, L2_PROT, L3_PROT, L4_PROT };
static const unsigned int pin_cmd[4] = { MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L2_TABLE, MMUEXT_PIN_L3_TABLE,
                                         MMUEXT_PIN_L4_TABLE };

static pgentry_t *pte_to_virt(pgentry_t e) { return mfn_to_virt(pte_to_mfn(e)); }

/* Make pfn *pt_pfn a level-`level` page table and hook it at `offset` of the table prev_l_mfn. */
static void new_pt_frame(unsigned long *pt_pfn, unsigned long prev_l_mfn, unsigned long offset,
                         unsigned long level)
{
    unsigned long pt_page = (unsigned long)pfn_to_virt(*pt_pfn);
    pgentry_t *tab = pt_base;
    struct mmu_update mmu_updates[1];
    struct mmuext_op pin_request;
    long rc;

    /* Zeroed while still writable: Xen validates its contents when it becomes a page table. */
    memset((void *)pt_page, 0, PAGE_SIZE);

    /* Its own mapping must be read-only before Xen accepts it as a page table. */
    tab = pte_to_virt(tab[l4_table_offset(pt_page)]);
    tab = pte_to_virt(tab[l3_table_offset(pt_page)]);
    mmu_updates[0].ptr = (tab[l2_table_offset(pt_page)] & PTE_MASK) + sizeof(pgentry_t) * l1_table_offset(pt_page);
    mmu_updates[0].val = (pgentry_t)pfn_to_mfn(*pt_pfn) << PAGE_SHIFT | (pt_prot[level - 1] & ~_PAGE_RW);
    if ((rc = HYPERVISOR_mmu_update(mmu_updates, 1, NULL, DOMID_SELF)) < 0) {
        printk("ERROR: PTE for new page table page could not be updated\n");
        printk("       mmu_update failed with rc=%ld\n", rc);
        do_exit();
    }

    /* Pin it: Xen validates it now and keeps it a page table whatever points at it. */
    pin_request.cmd = pin_cmd[level - 1];
    pin_request.arg1.mfn = pfn_to_mfn(*pt_pfn);
    if ((rc = HYPERVISOR_mmuext_op(&pin_request, 1, NULL, DOMID_SELF)) < 0) {
        printk("ERROR: pinning failed with rc=%ld\n", rc);
        do_exit();
    }

    /* Hook it into the hierarchy. */
    mmu_updates[0].ptr = ((pgentry_t)prev_l_mfn << PAGE_SHIFT) + sizeof(pgentry_t) * offset;
    mmu_updates[0].val = (pgentry_t)pfn_to_mfn(*pt_pfn) << PAGE_SHIFT | pt_prot[level];
    if ((rc = HYPERVISOR_mmu_update(mmu_updates, 1, NULL, DOMID_SELF)) < 0) {
        printk("ERROR: mmu_update failed with rc=%ld\n", rc);
        do_exit();
    }
    *pt_pfn += 1;
}

/* Map [*start_pfn, *max_pfn) at VA == pfn << 12; *start_pfn moves past the page tables we took. */
static void build_pagetable(unsigned long *start_pfn, unsigned long *max_pfn)
{
    static struct mmu_update mmu_updates[512 + 1];
    unsigned long pt_pfn = *start_pfn, pfn_to_map = *start_pfn;
    unsigned long start_address = (unsigned long)pfn_to_virt(pfn_to_map);
    unsigned long end_address = (unsigned long)pfn_to_virt(*max_pfn);
    unsigned long pt_mfn, offset;
    pgentry_t *tab;
    int count = 0;
    long rc;

    if (*max_pfn >= virt_to_pfn(HYPERVISOR_VIRT_START)) {
        *max_pfn = virt_to_pfn(HYPERVISOR_VIRT_START - PAGE_SIZE);
        end_address = (unsigned long)pfn_to_virt(*max_pfn);
    }
    printk("Mapping memory range 0x%lx - 0x%lx\n", start_address, end_address);
    while (start_address < end_address) {
        tab = pt_base;
        pt_mfn = virt_to_mfn(pt_base);

        offset = l4_table_offset(start_address);
        if (!(tab[offset] & _PAGE_PRESENT))
            new_pt_frame(&pt_pfn, pt_mfn, offset, L3_FRAME);
        pt_mfn = pte_to_mfn(tab[offset]);
        tab = mfn_to_virt(pt_mfn);

        offset = l3_table_offset(start_address);
        if (!(tab[offset] & _PAGE_PRESENT))
            new_pt_frame(&pt_pfn, pt_mfn, offset, L2_FRAME);
        pt_mfn = pte_to_mfn(tab[offset]);
        tab = mfn_to_virt(pt_mfn);

        offset = l2_table_offset(start_address);
        if (!(tab[offset] & _PAGE_PRESENT))
            new_pt_frame(&pt_pfn, pt_mfn, offset, L1_FRAME);
        pt_mfn = pte_to_mfn(tab[offset]);
        tab = mfn_to_virt(pt_mfn);

        offset = l1_table_offset(start_address);
        if (!(tab[offset] & _PAGE_PRESENT)) {
            mmu_updates[count].ptr = ((pgentry_t)pt_mfn << PAGE_SHIFT) + sizeof(pgentry_t) * offset;
            mmu_updates[count].val = (pgentry_t)pfn_to_mfn(pfn_to_map) << PAGE_SHIFT | L1_PROT;
            count++;
        }
        pfn_to_map++;
        if (count == 512 || (count && pfn_to_map == *max_pfn)) {
            if ((rc = HYPERVISOR_mmu_update(mmu_updates, count, NULL, DOMID_SELF)) < 0) {
                printk("ERROR: build_pagetable(): PTE could not be updated\n");
                printk("       mmu_update failed with rc=%ld\n", rc);
                do_exit();
            }
            count = 0;
        }
        start_address += PAGE_SIZE;
    }
    *start_pfn = pt_pfn;
}

/* Text and rodata read-only, except the shared_info page which lives in text (x86_64.S). */
static void set_readonly(void *text, void *etext)
{
    static struct mmu_update mmu_updates[512 + 1];
    unsigned long start_address = ((unsigned long)text + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    unsigned long end_address = (unsigned long)etext;
    pgentry_t *tab;
    unsigned long mfn, offset;
    int count = 0;

    printk("setting %p-%p readonly\n", text, etext);
    while (start_address + PAGE_SIZE <= end_address) {
        tab = pt_base;
        tab = pte_to_virt(tab[l4_table_offset(start_address)]);
        tab = pte_to_virt(tab[l3_table_offset(start_address)]);
        mfn = pte_to_mfn(tab[l2_table_offset(start_address)]);
        tab = mfn_to_virt(mfn);
        offset = l1_table_offset(start_address);
        if (start_address != (unsigned long)shared_info) {
            mmu_updates[count].ptr = ((pgentry_t)mfn << PAGE_SHIFT) + sizeof(pgentry_t) * offset;
            mmu_updates[count].val = tab[offset] & ~_PAGE_RW;
            count++;
        } else {
            printk("skipped 0x%lx\n", start_address);
        }
        start_address += PAGE_SIZE;
        if (count && (count == 512 || start_address + PAGE_SIZE > end_address)) {
            if (HYPERVISOR_mmu_update(mmu_updates, count, NULL, DOMID_SELF) < 0) {
                printk("ERROR: set_readonly(): PTE could not be updated\n");
                do_exit();
            }
            count = 0;
        }
    }
    struct mmuext_op op = { .cmd = MMUEXT_TLB_FLUSH_LOCAL };
    HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);
}

/* Page 0 (it only held _start) is wiped and unmapped, so NULL pointers fault. */
static void clear_bootstrap(void)
{
    long rc;
    memset(_text, 0, PAGE_SIZE);
    if ((rc = HYPERVISOR_update_va_mapping(0, 0, UVMF_INVLPG)))
        printk("Unable to unmap NULL page. rc=%ld\n", rc);
}

/* The p2m frame lists a toolstack reads to save/migrate us (shared_info.arch). */
static void arch_init_p2m(unsigned long max_pfn)
{
    unsigned long *l3_list = (unsigned long *)alloc_page(), *l2_list = NULL;
    for (unsigned long pfn = 0; pfn < max_pfn; pfn += 512) {
        if (!(pfn % (512 * 512))) {
            l2_list = (unsigned long *)alloc_page();
            l3_list[pfn / (512 * 512)] = virt_to_mfn(l2_list);
        }
        l2_list[(pfn / 512) % 512] = virt_to_mfn(phys_to_machine_mapping + pfn);
    }
    HYPERVISOR_shared_info->pfn_to_mfn_frame_list_list = virt_to_mfn(l3_list);
    HYPERVISOR_shared_info->max_pfn = max_pfn;
}

/* -- the page allocator -------------------------------------------------------------------------------- */
static uint64_t *alloc_bitmap;          /* 1 = allocated */
static unsigned long alloc_max_pfn, nr_free_pages;

static int page_used(unsigned long pfn) { return (alloc_bitmap[pfn / 64] >> (pfn % 64)) & 1; }
static void mark(unsigned long pfn, unsigned long n, int used)
{
    for (; n; n--, pfn++) {
        if (used)
            alloc_bitmap[pfn / 64] |= 1UL << (pfn % 64);
        else
            alloc_bitmap[pfn / 64] &= ~(1UL << (pfn % 64));
    }
}

static void init_page_allocator(unsigned long min_pfn, unsigned long max_pfn)
{
    unsigned long words = (max_pfn + 63) / 64;
    unsigned long bitmap_pages = (words * 8 + PAGE_SIZE - 1) / PAGE_SIZE;
    printk("MM: Initialise page allocator for %lx(%lx)-%lx(%lx)\n", (unsigned long)pfn_to_virt(min_pfn),
           min_pfn, (unsigned long)pfn_to_virt(max_pfn), max_pfn);
    alloc_bitmap = pfn_to_virt(min_pfn);
    memset(alloc_bitmap, 0xff, bitmap_pages * PAGE_SIZE);
    alloc_max_pfn = max_pfn;
    min_pfn += bitmap_pages;
    mark(min_pfn, max_pfn - min_pfn, 0);
    nr_free_pages = max_pfn - min_pfn;
}

/* 2^order pages, aligned to their size; 0 when none is left. */
unsigned long alloc_pages(int order)
{
    unsigned long n = 1UL << order;
    for (unsigned long pfn = 0; pfn + n <= alloc_max_pfn; pfn += n) {
        unsigned long i;
        for (i = 0; i < n && !page_used(pfn + i); i++)
            ;
        if (i == n) {
            mark(pfn, n, 1);
            nr_free_pages -= n;
            return (unsigned long)pfn_to_virt(pfn);
        }
    }
    printk("Cannot handle page request order %d!\n", order);
    return 0;
}

void free_pages(void *pointer, int order)
{
    mark(virt_to_pfn(pointer), 1UL << order, 0);
    nr_free_pages += 1UL << order;
}

/* -- malloc: power-of-two size classes from 32 bytes to a page; bigger requests take whole pages ------- */
struct chunk_head { size_t size; union { struct chunk_head *next; char align[8]; }; };
static struct chunk_head *free_lists[8];            /* 32, 64, ..., 4096 bytes including the header */

void *malloc(size_t size)
{
    size_t need = size + 16;
    if (need > PAGE_SIZE) {
        int order = 0;
        while ((PAGE_SIZE << order) < need)
            order++;
        struct chunk_head *h = (struct chunk_head *)alloc_pages(order);
        if (!h)
            return NULL;
        h->size = PAGE_SIZE << order;
        return (char *)h + 16;
    }
    int cls = 0;
    while ((32UL << cls) < need)
        cls++;
    if (!free_lists[cls]) {
        char *page = (char *)alloc_page();
        if (!page)
            return NULL;
        for (size_t off = 0; off < PAGE_SIZE; off += 32UL << cls) {
            struct chunk_head *h = (struct chunk_head *)(page + off);
            h->size = 32UL << cls;
            h->next = free_lists[cls];
            free_lists[cls] = h;
        }
    }
    struct chunk_head *h = free_lists[cls];
    free_lists[cls] = h->next;
    return (char *)h + 16;
}

void free(void *p)
{
    if (!p)
        return;
    struct chunk_head *h = (struct chunk_head *)((char *)p - 16);
    if (h->size > PAGE_SIZE) {
        int order = 0;
        while ((PAGE_SIZE << order) < h->size)
            order++;
        free_pages(h, order);
        return;
    }
    int cls = 0;
    while ((32UL << cls) < h->size)
        cls++;
    h->next = free_lists[cls];
    free_lists[cls] = h;
}

char *strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* -- on-demand mappings (grant table frames, foreign pages) --------------------------------------------- */

/* The L1 entry for va, building missing page tables from the page allocator (Mini-OS's need_pgt). */
static pgentry_t *need_pgt(unsigned long va)
{
    pgentry_t *tab = pt_base;
    unsigned long pt_mfn = virt_to_mfn(pt_base), pt_pfn;
    static const unsigned long levels[3] = { L3_FRAME, L2_FRAME, L1_FRAME };
    unsigned long offsets[3] = { l4_table_offset(va), l3_table_offset(va), l2_table_offset(va) };

    for (int i = 0; i < 3; i++) {
        if (!(tab[offsets[i]] & _PAGE_PRESENT)) {
            pt_pfn = virt_to_pfn(alloc_page());
            if (!pt_pfn)
                return NULL;
            new_pt_frame(&pt_pfn, pt_mfn, offsets[i], levels[i]);
        }
        pt_mfn = pte_to_mfn(tab[offsets[i]]);
        tab = mfn_to_virt(pt_mfn);
    }
    return &tab[l1_table_offset(va)];
}

static unsigned long demand_map_next = VIRT_DEMAND_AREA;

/* Map machine frames f[i*stride] + i*incr at fresh virtual addresses (Mini-OS's map_frames_ex). */
void *map_frames_ex(const unsigned long *mfns, unsigned long n, unsigned long stride, unsigned long incr,
                    unsigned long alignment, domid_t id, int *err, unsigned long prot)
{
    unsigned long va = (demand_map_next + alignment * PAGE_SIZE - 1) & ~(alignment * PAGE_SIZE - 1);
    struct mmu_update mmu_updates[16];
    unsigned long done = 0;

    if (va + n * PAGE_SIZE > VIRT_DEMAND_AREA + DEMAND_MAP_PAGES * PAGE_SIZE) {
        printk("Failed to find %ld frames!\n", n);
        return NULL;
    }
    demand_map_next = va + n * PAGE_SIZE;
    while (done < n) {
        unsigned long todo = n - done < 16 ? n - done : 16, i;
        for (i = 0; i < todo; i++) {
            unsigned long this_va = va + (done + i) * PAGE_SIZE;
            pgentry_t *pgt = need_pgt(this_va);
            if (!pgt)
                return NULL;
            mmu_updates[i].ptr = virt_to_mach(pgt) | MMU_NORMAL_PT_UPDATE;
            mmu_updates[i].val = ((pgentry_t)(mfns[(done + i) * stride] + (done + i) * incr) << PAGE_SHIFT) | prot;
        }
        long rc = HYPERVISOR_mmu_update(mmu_updates, (unsigned int)todo, NULL, id);
        if (rc < 0) {
            if (err)
                err[done * stride] = (int)rc;
            printk("Map %ld (%lx, ...) at %lx failed: %ld.\n", todo, mfns[done * stride] + done * incr,
                   va, rc);
            return NULL;
        }
        done += todo;
    }
    return (void *)va;
}

void init_mm(void)
{
    unsigned long start_pfn, max_pfn;

    printk("MM: Init\n");
    printk("      _text: %p(VA)\n", (void *)_text);
    printk("     _etext: %p(VA)\n", (void *)_etext);
    printk("     _edata: %p(VA)\n", (void *)_edata);
    printk("stack start: %p(VA)\n", (void *)stack);
    printk("       _end: %p(VA)\n", (void *)_end);
    start_pfn = first_free_pfn;
    max_pfn = last_free_pfn;
    printk("  start_pfn: %lx\n", start_pfn);
    printk("    max_pfn: %lx\n", max_pfn);
    build_pagetable(&start_pfn, &max_pfn);
    clear_bootstrap();
    set_readonly(_text, _etext);
    init_page_allocator(start_pfn, max_pfn);
    printk("MM: done\n");
    arch_init_p2m(max_pfn);
    printk("Demand map pfns at %lx-%lx.\n", VIRT_DEMAND_AREA, VIRT_DEMAND_AREA + DEMAND_MAP_PAGES * PAGE_SIZE);
}
