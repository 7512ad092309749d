/*
 * Grant tables, as Mini-OS's gnttab.c: ask Xen for the table frames (GNTTABOP_setup_table), map them on
 * demand, and keep a free list of grant references (the first few are reserved for the toolstack).
 */
#include "minios.h"

#define NR_GRANT_FRAMES 4
#define NR_RESERVED_ENTRIES 8
struct grant_entry_v1 { uint16_t flags; domid_t domid; uint32_t frame; };
#define NR_GRANT_ENTRIES (NR_GRANT_FRAMES * PAGE_SIZE / sizeof(struct grant_entry_v1))
#define GTF_permit_access 1
#define GTF_readonly (1 << 2)

static struct grant_entry_v1 *gnttab_table;
static uint32_t gnttab_list[NR_GRANT_ENTRIES];

static void put_free_entry(uint32_t ref)
{
    gnttab_list[ref] = gnttab_list[0];
    gnttab_list[0] = ref;
}

static uint32_t get_free_entry(void)
{
    uint32_t ref = gnttab_list[0];
    BUG_ON(ref < NR_RESERVED_ENTRIES || ref >= NR_GRANT_ENTRIES);
    gnttab_list[0] = gnttab_list[ref];
    return ref;
}

/* Let domid map our frame: fill in the entry, flags last (the other side checks them). */
uint32_t gnttab_grant_access(domid_t domid, unsigned long frame, int readonly)
{
    uint32_t ref = get_free_entry();
    gnttab_table[ref].frame = (uint32_t)frame;
    gnttab_table[ref].domid = domid;
    wmb();
    gnttab_table[ref].flags = GTF_permit_access | (readonly ? GTF_readonly : 0);
    return ref;
}

int gnttab_end_access(uint32_t ref)
{
    volatile uint16_t *flags = &gnttab_table[ref].flags;
    uint16_t old = *flags;
    if (old & (3 << 3)) {               /* GTF_reading | GTF_writing: still mapped by the other side */
        printk("WARNING: g.e. still in use! (%x)\n", old);
        return 0;
    }
    *flags = 0;
    put_free_entry(ref);
    return 1;
}

void init_gnttab(void)
{
    struct gnttab_setup_table setup;
    unsigned long frames[NR_GRANT_FRAMES];

    for (uint32_t i = NR_RESERVED_ENTRIES; i < NR_GRANT_ENTRIES; i++)
        put_free_entry(i);
    setup.dom = DOMID_SELF;
    setup.nr_frames = NR_GRANT_FRAMES;
    setup.frame_list = frames;
    long rc = HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &setup, 1);
    if (rc || setup.status) {
        printk("GNTTABOP_setup_table failed: rc=%ld status=%d\n", rc, setup.status);
        do_exit();
    }
    gnttab_table = map_frames(frames, NR_GRANT_FRAMES);
    if (!gnttab_table)
        do_exit();
    printk("gnttab_table mapped at %p.\n", (void *)gnttab_table);
}
