/* Page-table updates Xen must refuse: frames the domain does not own, page tables made writable, Xen's
 * L4 slots -- and the `done` count of a batch that stops part-way. A valid update must work. */
#include "selftest.h"

#define EPERM 1
#define EBUSY 16
#define EINVAL 22

static unsigned long *table_va(unsigned long entry)
{
    return mfn_to_virt((entry & 0x000ffffffffff000UL) >> PAGE_SHIFT);
}

/* Machine address of the L1 entry that maps va in the bootstrap tables. */
static unsigned long l1_entry_ma(unsigned long va)
{
    unsigned long *t = (unsigned long *)si->pt_base;
    for (int shift = 39; shift > 21; shift -= 9)
        t = table_va(t[(va >> shift) & 511]);
    unsigned long l1_mfn = (t[(va >> 21) & 511] & 0x000ffffffffff000UL) >> PAGE_SHIFT;
    return (l1_mfn << PAGE_SHIFT) + ((va >> 12) & 511) * 8;
}

static long update(unsigned long ptr, unsigned long val)
{
    struct mmu_update u = { .ptr = ptr, .val = val };
    return HYPERVISOR_mmu_update(&u, 1, 0, DOMID_SELF);
}

void run_mmu(void)
{
    unsigned long pt_end = si->pt_base + si->nr_pt_frames * PAGE_SIZE;
    unsigned long va = pt_end + 32 * PAGE_SIZE;          /* a free page past the boot stack */
    unsigned long ma = l1_entry_ma(va);
    unsigned long *l4 = (unsigned long *)si->pt_base;
    unsigned long xen_mfn = (l4[256] & 0x000ffffffffff000UL) >> PAGE_SHIFT;   /* Xen's M2P L3 */
    unsigned long l4_mfn = virt_to_mfn(l4);

    expect("map_frame_beyond_ram", update(ma, (0xfffffUL << PAGE_SHIFT) | 7), -EPERM);
    expect("map_xen_frame", update(ma, (xen_mfn << PAGE_SHIFT) | 5), -EBUSY);
    expect("map_page_table_writable", update(ma, (l4_mfn << PAGE_SHIFT) | 7), -EBUSY);
    expect("map_page_table_readonly", update(ma, (l4_mfn << PAGE_SHIFT) | 5), 0);
    expect("read_through_new_mapping", ((unsigned long *)va)[256] == l4[256], 1);
    expect("write_xen_l4_slot", update((l4_mfn << PAGE_SHIFT) + 256 * 8, 0), -EINVAL);
    expect("pte_in_foreign_frame", update(xen_mfn << PAGE_SHIFT, 0), -EINVAL);
    expect("bad_l1_flags", update(ma, (virt_to_mfn(si) << PAGE_SHIFT) | 7 | 0x10), -EINVAL);
    expect("update_va_mapping_foreign", HYPERVISOR_update_va_mapping(va, (xen_mfn << PAGE_SHIFT) | 5, UVMF_INVLPG),
           -EBUSY);

    /* A batch: two good updates, a bad one, a good one: stops at the bad one with done = 2. */
    struct mmu_update batch[4] = {
        { ma, (virt_to_mfn(si) << PAGE_SHIFT) | 7 },
        { ma + 8, (virt_to_mfn(si) << PAGE_SHIFT) | 5 },
        { ma + 16, (0xfffffUL << PAGE_SHIFT) | 7 },
        { ma + 24, (virt_to_mfn(si) << PAGE_SHIFT) | 5 },
    };
    unsigned int done = 1234;
    expect("batch_rc", HYPERVISOR_mmu_update(batch, 4, &done, DOMID_SELF), -EPERM);
    expect("batch_done", done, 2);
    expect("batch_mapping_works", !memcmp((void *)va, si->magic, 14), 1);
    expect("foreign_domain", update(ma, 0) == 0 && HYPERVISOR_mmu_update(batch, 1, 0, 5) == -3, 1);

    /* Pin/unpin: the L4 is pinned by the builder already. */
    struct mmuext_op op = { .cmd = MMUEXT_PIN_L4_TABLE, .arg1.mfn = l4_mfn };
    expect("pin_twice", HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF), -EINVAL);
    op.cmd = MMUEXT_PIN_L1_TABLE;
    op.arg1.mfn = virt_to_mfn(si);          /* mapped writable at si */
    expect("pin_writable_frame_as_l1", HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF), -EINVAL);
    op.cmd = MMUEXT_NEW_BASEPTR;
    op.arg1.mfn = l4_mfn;
    expect("new_baseptr_same", HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF), 0);
    op.cmd = MMUEXT_TLB_FLUSH_LOCAL;
    expect("tlb_flush_local", HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF), 0);
    op.cmd = 99;
    expect("mmuext_unknown", HYPERVISOR_mmuext_op(&op, 1, 0, DOMID_SELF), -38);
}
