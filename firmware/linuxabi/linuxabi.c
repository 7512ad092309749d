/*
 * linuxabi: a test guest carrying the ELF notes Linux 6.1 carries (INIT_P2M, MOD_START_PFN, a 16-byte
 * L1_MFN_VALID, FEATURES with a required feature, SUPPORTED_FEATURES) and making its hypercalls with a bare
 * `syscall`, as Linux does, with no hypercall page. It reads back what the domain builder did for those
 * notes -- the p2m list mapped at the address it asked for, the unmapped initrd given by pfn -- prints
 * `name = value` facts with ok/FAIL, and powers off.
 */
#include "console.h"
#include "hypercall.h"
#include "lib.h"

#define P2M_VA 0x8000000000UL
#define SIF_MOD_START_PFN (1 << 3)

extern char _end[];
extern unsigned long boot_entry_rsp;
static int failures;
void run_xsave(void);
void run_hcalls(struct start_info *si);
void run_dbreg(void);

void expect(const char *what, long got, long want)
{
    if (got == want)
        printk("%s = %ld ok\n", what, got);
    else {
        printk("%s = %ld FAIL (want %ld)\n", what, got, want);
        failures++;
    }
}

static unsigned long scratch_va;

/* A machine frame, mapped read-only at the scratch page (page tables outside the bootstrap mapping can
 * only be read that way). */
static const void *peek(unsigned long mfn)
{
    if (HYPERVISOR_update_va_mapping(scratch_va, (mfn << PAGE_SHIFT) | 5, UVMF_INVLPG)) {
        expect("peek_mapping", 1, 0);
        return 0;
    }
    return (const void *)scratch_va;
}

/* The L1 entry for va in the current page tables, or 0 if an upper level is not present. */
static unsigned long l1_entry(unsigned long l4_mfn, unsigned long va)
{
    unsigned long mfn = l4_mfn;
    for (int shift = 39; shift >= 12; shift -= 9) {
        const unsigned long *t = peek(mfn);
        unsigned long e = t ? t[(va >> shift) & 511] : 0;
        if (!(e & 1) || shift == 12)
            return e;
        mfn = (e & 0x000ffffffffff000UL) >> PAGE_SHIFT;
    }
    return 0;
}

void guest_main(struct start_info *si)
{
    virt_base = VIRT_BASE;
    phys_to_machine_mapping = (unsigned long *)si->mfn_list;
    console_ring_init(mfn_to_virt(si->console.domU.mfn), si->console.domU.evtchn);
    /* Free pages past the boot stack (the bootstrap mapping extends at least 512 KiB beyond it). */
    scratch_va = si->pt_base + (si->nr_pt_frames + 16) * PAGE_SIZE;
    unsigned long map_va = scratch_va + PAGE_SIZE;
    unsigned long l4 = virt_to_mfn((void *)si->pt_base);
    printk("linuxabi: hypercalls by syscall, no hypercall page\n");
    if (!strcmp(si->cmd_line, "xsave") || !strcmp(si->cmd_line, "hcalls") || !strcmp(si->cmd_line, "dbreg")) {
        if (si->cmd_line[0] == 'x')
            run_xsave();
        else if (si->cmd_line[0] == 'd')
            run_dbreg();
        else
            run_hcalls(si);
        printk("linuxabi: %s\n", failures ? "FAILED" : "all ok");
        HYPERVISOR_shutdown(SHUTDOWN_poweroff);
    }
    printk("flags = %x\n", si->flags);
    printk("mfn_list = %lx\n", si->mfn_list);
    printk("first_p2m_pfn = %lx\n", si->first_p2m_pfn);
    printk("nr_p2m_frames = %lu\n", si->nr_p2m_frames);
    printk("mod_start = %lx\n", si->mod_start);
    printk("mod_len = %lu\n", si->mod_len);
    printk("pt_base = %lx\n", si->pt_base);
    printk("nr_pt_frames = %lu\n", si->nr_pt_frames);
    printk("kernel_end = %lx\n", (unsigned long)_end);

    /* The p2m list where INIT_P2M asked for it, writable, agreeing with the M2P on every frame; its frames
     * are the first of the first_p2m_pfn range. */
    expect("p2m_at_init_p2m", si->mfn_list == P2M_VA, 1);
    const unsigned long *p2m = (const unsigned long *)si->mfn_list;
    const unsigned long *m2p = (const unsigned long *)MACH2PHYS_VIRT_START;
    unsigned long mismatches = 0;
    for (unsigned long pfn = 0; pfn < si->nr_pages; pfn++)
        mismatches += m2p[p2m[pfn]] != pfn;
    expect("m2p_mismatches", mismatches, 0);
    unsigned long p2m_pages = (si->nr_pages * 8 + PAGE_SIZE - 1) / PAGE_SIZE, wrong = 0, readonly = 0;
    for (unsigned long i = 0; i < p2m_pages; i++) {
        unsigned long e = l1_entry(l4, P2M_VA + i * PAGE_SIZE);
        wrong += ((e >> PAGE_SHIFT) & 0xffffffffffUL) != p2m[si->first_p2m_pfn + i];
        readonly += !(e & 2);
    }
    expect("p2m_frames_mismatch", wrong, 0);
    expect("p2m_readonly_pages", readonly, 0);
    expect("p2m_end_unmapped", l1_entry(l4, P2M_VA + p2m_pages * PAGE_SIZE) & 1, 0);
    /* The page tables mapping the list follow it in the p2m range: nothing maps them. */
    expect("p2m_tables_counted", si->nr_p2m_frames > p2m_pages, 1);

    /* The bootstrap mapping ends before the initrd and the p2m range, which are unmapped. */
    unsigned long va = VIRT_BASE;
    while (l1_entry(l4, va) & 1)
        va += PAGE_SIZE;
    unsigned long mapped_pfns = (va - VIRT_BASE) >> PAGE_SHIFT;
    printk("mapped_end = %lx\n", va);
    expect("initrd_unmapped", si->mod_start >= mapped_pfns, 1);
    expect("p2m_range_unmapped", si->first_p2m_pfn >= mapped_pfns, 1);

    /* The initrd, given by pfn (SIF_MOD_START_PFN): map each page over a free page past the boot stack
     * and add up its bytes. */
    expect("mod_start_pfn_flag", !!(si->flags & SIF_MOD_START_PFN), 1);
    unsigned long sum = 0;
    char head[9] = {0};
    for (unsigned long off = 0; off < si->mod_len; off += PAGE_SIZE) {
        unsigned long mfn = p2m[si->mod_start + off / PAGE_SIZE];
        if (HYPERVISOR_update_va_mapping(map_va, (mfn << PAGE_SHIFT) | 7, UVMF_INVLPG)) {
            expect("map_initrd", 1, 0);
            break;
        }
        const unsigned char *page = (const unsigned char *)map_va;
        if (off == 0)
            memcpy(head, page, 8);
        for (int i = 0; i < 4096; i++)
            sum += page[i];
    }
    printk("initrd_head = %s\n", head);
    printk("initrd_sum = %lu\n", sum);

    printk("linuxabi: %s\n", failures ? "FAILED" : "all ok");
    HYPERVISOR_shutdown(SHUTDOWN_poweroff);
    for (;;)
        ;
}
