/* The start-of-day contract, read back from inside the guest: start_info, the p2m/M2P pair, the bootstrap
 * page tables (what they map, read-only page tables) and shared_info as Xen hands it over. */
#include "selftest.h"

extern unsigned long boot_entry_rsp;
extern char _text[], _end[];

static unsigned long *table_va(unsigned long entry)
{
    return mfn_to_virt((entry & 0x000ffffffffff000UL) >> PAGE_SHIFT);
}

/* The L1 entry for va in the bootstrap tables, or 0 if an upper level is not present. */
static unsigned long l1_entry(unsigned long va)
{
    unsigned long *t = (unsigned long *)si->pt_base;
    for (int shift = 39; shift >= 21; shift -= 9) {
        unsigned long e = t[(va >> shift) & 511];
        if (!(e & 1))
            return 0;
        t = table_va(e);
    }
    return t[(va >> 12) & 511];
}

void run_layout(void)
{
    printk("magic = %s\n", si->magic);
    printk("nr_pages = %lu\n", si->nr_pages);
    printk("shared_info = %lx\n", si->shared_info);
    printk("flags = %x\n", si->flags);
    printk("store_mfn = %lx\n", si->store_mfn);
    printk("store_evtchn = %u\n", si->store_evtchn);
    printk("console_mfn = %lx\n", si->console.domU.mfn);
    printk("console_evtchn = %u\n", si->console.domU.evtchn);
    printk("pt_base = %lx\n", si->pt_base);
    printk("nr_pt_frames = %lu\n", si->nr_pt_frames);
    printk("mfn_list = %lx\n", si->mfn_list);
    printk("mod_start = %lx\n", si->mod_start);
    printk("mod_len = %lu\n", si->mod_len);
    printk("cmd_line = %s\n", si->cmd_line);
    printk("first_p2m_pfn = %lx\n", si->first_p2m_pfn);
    printk("nr_p2m_frames = %lu\n", si->nr_p2m_frames);
    printk("start_info_va = %lx\n", (unsigned long)si);
    printk("entry_rsp = %lx\n", boot_entry_rsp);
    printk("kernel = %lx-%lx\n", (unsigned long)_text, (unsigned long)_end);

    /* p2m and M2P agree on every frame. */
    const unsigned long *p2m = (const unsigned long *)si->mfn_list;
    const unsigned long *m2p = (const unsigned long *)MACH2PHYS_VIRT_START;
    unsigned long mismatches = 0, identity = 0;
    for (unsigned long pfn = 0; pfn < si->nr_pages; pfn++) {
        if (m2p[p2m[pfn]] != pfn)
            mismatches++;
        identity += p2m[pfn] == pfn;
    }
    expect("m2p_mismatches", mismatches, 0);
    printk("identity_frames = %lu\n", identity);

    /* The bootstrap mapping: contiguous from VIRT_BASE; page tables read-only, the rest writable. */
    unsigned long pt_start = si->pt_base, pt_end = si->pt_base + si->nr_pt_frames * PAGE_SIZE;
    unsigned long va = VIRT_BASE, ro_outside_pt = 0, rw_pt = 0, wrong_frame = 0;
    for (;; va += PAGE_SIZE) {
        unsigned long e = l1_entry(va);
        if (!(e & 1))
            break;
        int in_pt = va >= pt_start && va < pt_end;
        if (in_pt && (e & 2))
            rw_pt++;
        if (!in_pt && !(e & 2))
            ro_outside_pt++;
        if (((e >> PAGE_SHIFT) & 0xffffffffffUL) != p2m[(va - VIRT_BASE) >> PAGE_SHIFT])
            wrong_frame++;
    }
    printk("mapped_end = %lx\n", va);
    expect("pt_pages_writable", rw_pt, 0);
    expect("other_pages_readonly", ro_outside_pt, 0);
    expect("pte_frame_mismatches", wrong_frame, 0);
    expect("hypercall_page_filled", (unsigned char)hypercall_page[0] != 0xc3, 1);

    /* shared_info as handed over: events masked on vCPU 0, nothing pending, a wallclock set. Map it over
     * a free page past the boot stack. */
    unsigned long map_va = pt_end + 16 * PAGE_SIZE;
    expect("map_shared_info", HYPERVISOR_update_va_mapping(map_va, si->shared_info | 7, UVMF_INVLPG), 0);
    struct shared_info *s = (struct shared_info *)map_va;
    expect("upcall_mask_at_entry", s->vcpu_info[0].evtchn_upcall_mask, 1);
    printk("wc_sec = %u\n", s->wc_sec);
    expect("time_version_even", s->vcpu_info[0].time.version & 1, 0);
    expect("tsc_to_system_mul", s->vcpu_info[0].time.tsc_to_system_mul, 1L << 31);
}
