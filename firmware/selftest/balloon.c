/* Ballooning as a PV guest does it: give frames back with decrease_reservation, take them again with
 * populate_physmap and increase_reservation, within the domain's cap (max_pages). The results are extent
 * counts, never errnos; each fact is what Xen's memory.c gives for the same calls. */
#include "selftest.h"

#define XENMEM_increase_reservation 0
#define XENMEM_decrease_reservation 1
#define XENMEM_populate_physmap     6
#define INVALID_M2P                 (~0UL)

struct xen_memory_reservation {
    unsigned long *extent_start;
    unsigned long nr_extents;
    unsigned int extent_order;
    unsigned int mem_flags;
    domid_t domid;
};

static const unsigned long *const m2p = (const unsigned long *)0xffff800000000000UL;

static long memop(unsigned int op, unsigned long *list, unsigned long n, unsigned int order)
{
    struct xen_memory_reservation r = { list, n, order, 0, DOMID_SELF };
    return HYPERVISOR_memory_op(op, &r);
}

static long reservation(void)
{
    domid_t self = DOMID_SELF;
    return HYPERVISOR_memory_op(XENMEM_current_reservation, &self);
}

void run_balloon(void)
{
    unsigned long *p2m = (unsigned long *)si->mfn_list;
    long before = reservation();
    domid_t self = DOMID_SELF;
    long cap = HYPERVISOR_memory_op(XENMEM_maximum_reservation, &self);
    unsigned long pfn[4], mfn[4];

    printk("balloon: %ld pages, cap %ld\n", before, cap);
    /* The last four pfns: past the start-of-day mapping, so nothing maps them. */
    for (int i = 0; i < 4; i++) {
        pfn[i] = si->nr_pages - 4 + i;
        mfn[i] = p2m[pfn[i]];
    }
    expect("decrease_4", memop(XENMEM_decrease_reservation, mfn, 4, 0), 4);
    expect("reservation_after_decrease", before - reservation(), 4);
    expect("m2p_cleared", m2p[mfn[0]] == INVALID_M2P && m2p[mfn[3]] == INVALID_M2P, 1);
    expect("decrease_not_owned", memop(XENMEM_decrease_reservation, mfn, 1, 0), 0);

    /* A page still mapped (a scratch page of the start-of-day mapping) leaves the physmap but stays
     * allocated: it is still readable and still counted. */
    unsigned long scratch_va = si->pt_base + (si->nr_pt_frames + 48) * PAGE_SIZE;
    unsigned long scratch_mfn = virt_to_mfn((void *)scratch_va);
    *(volatile unsigned long *)scratch_va = 0x5eed;
    expect("decrease_mapped", memop(XENMEM_decrease_reservation, &scratch_mfn, 1, 0), 1);
    expect("mapped_page_kept", *(volatile unsigned long *)scratch_va == 0x5eed && before - reservation() == 4, 1);
    expect("mapped_page_m2p_cleared", m2p[scratch_mfn] == INVALID_M2P, 1);

    /* populate_physmap: frames for two pfns; the M2P names the pfns, the list gets the MFNs. */
    unsigned long list[2] = { pfn[0], pfn[1] };
    expect("populate_2", memop(XENMEM_populate_physmap, list, 2, 0), 2);
    expect("populate_m2p", m2p[list[0]] == pfn[0] && m2p[list[1]] == pfn[1], 1);
    expect("reservation_after_populate", before - reservation(), 2);

    /* increase_reservation: frames without a pfn, up to the cap. */
    unsigned long more[4] = { 0, 0, 0, 0 };
    long got = memop(XENMEM_increase_reservation, more, 4, 0);
    expect("increase_up_to_cap", got, 2);
    expect("increase_mfns_written", more[0] != 0 && more[1] != 0 && more[2] == 0, 1);
    expect("at_cap", reservation() == cap, 1);
    expect("increase_over_cap", memop(XENMEM_increase_reservation, more + 2, 1, 0), 0);
    expect("order_above_domu_limit", memop(XENMEM_increase_reservation, more, 1, 10), 0);
    expect("populate_bad_list", memop(XENMEM_populate_physmap, (unsigned long *)0x7ff000000000UL, 1, 0), 0);

    /* Give everything taken back: the reservation ends where it began, less the four pfns. */
    expect("decrease_again", memop(XENMEM_decrease_reservation, list, 2, 0) + memop(XENMEM_decrease_reservation,
           more, got, 0), 2 + got);
    expect("reservation_end", before - reservation(), 4);
}

/* Scenario `grow`: take pages with increase_reservation one at a time until Xen says no: a domain can grow
 * up to its maxmem, no further. */
void run_grow(void)
{
    long before = reservation(), n = 0;
    unsigned long mfn;
    while (memop(XENMEM_increase_reservation, &mfn, 1, 0) == 1 && n < 100000)
        n++;
    printk("grown_pages = %ld\n", n);
    expect("grow_reservation", reservation() - before, n);
}
