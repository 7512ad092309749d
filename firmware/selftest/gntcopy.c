/* Scenario `gntcopy`: GNTTABOP_copy as Xen's gnttab_copy answers it. Each op copies bytes between two
 * frames, each named by a grant reference or, for DOMID_SELF only, by machine frame number; each op gets
 * its own status and a failing op does not stop the batch. The checks: grants the domain gives itself
 * (source read-only, destination writable: not a read-only grant), frames that are not the domain's,
 * a destination that is a page table (no writable type reference: refused), ranges past the page,
 * unknown domains, dom0 (which grants us nothing), a zero length, and the hypercall's own errors. */
#include "selftest.h"

#define EFAULT 14
#define EINVAL 22
#define GNTTABOP_copy 5
#define GNTCOPY_source_gref 1
#define GNTCOPY_dest_gref 2
#define GTF_permit_access 1
#define GTF_readonly 4
#define GNTST_general_error (-1)
#define GNTST_bad_domain (-2)
#define GNTST_bad_gntref (-3)
#define GNTST_permission_denied (-8)
#define GNTST_bad_page (-9)
#define GNTST_bad_copy_arg (-10)

struct grant_entry_v1 { uint16_t flags; domid_t domid; uint32_t frame; };
struct gnttab_copy_ptr { union { uint32_t ref; unsigned long gmfn; } u; domid_t domid; uint16_t offset; };
struct gnttab_copy { struct gnttab_copy_ptr source, dest; uint16_t len, flags; int16_t status; };

static struct gnttab_copy ops[20];
static int nops;

/* Queue one op: `src`/`dst` are frame numbers or grant references (GNTCOPY_* in `flags` says which). */
static int op(domid_t sdom, unsigned long src, uint16_t soff, domid_t ddom, unsigned long dst, uint16_t doff,
              uint16_t len, uint16_t flags)
{
    struct gnttab_copy *o = &ops[nops];
    memset(o, 0, sizeof(*o));
    if (flags & GNTCOPY_source_gref)
        o->source.u.ref = src;
    else
        o->source.u.gmfn = src;
    if (flags & GNTCOPY_dest_gref)
        o->dest.u.ref = dst;
    else
        o->dest.u.gmfn = dst;
    o->source.domid = sdom;
    o->source.offset = soff;
    o->dest.domid = ddom;
    o->dest.offset = doff;
    o->len = len;
    o->flags = flags;
    o->status = 0x7777;
    return nops++;
}

void run_gntcopy(void)
{
    unsigned long pt_end = si->pt_base + si->nr_pt_frames * PAGE_SIZE;
    unsigned char *p = (unsigned char *)(pt_end + 48 * PAGE_SIZE);     /* source data */
    unsigned char *q = (unsigned char *)(pt_end + 49 * PAGE_SIZE);     /* destination */
    unsigned char *r = (unsigned char *)(pt_end + 50 * PAGE_SIZE);     /* granted read-only */
    unsigned long *t = (unsigned long *)(pt_end + 51 * PAGE_SIZE);     /* becomes an L1 */
    struct grant_entry_v1 *gnt = (struct grant_entry_v1 *)(pt_end + 52 * PAGE_SIZE);
    unsigned long pm = virt_to_mfn(p), qm = virt_to_mfn(q), rm = virt_to_mfn(r), tm = virt_to_mfn(t);
    unsigned long frames[1] = { 0 };
    struct gnttab_setup_table setup = { .dom = DOMID_SELF, .nr_frames = 1, .frame_list = frames };
    domid_t me;

    expect("setup_table", HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &setup, 1) || setup.status, 0);
    expect("map_grant_frame", HYPERVISOR_update_va_mapping((unsigned long)gnt, (frames[0] << PAGE_SHIFT) | 7,
                                                            UVMF_INVLPG), 0);
    /* Our domain id (a grant entry names its grantee by number): an unbound port to DOMID_SELF reports it. */
    struct evtchn_alloc_unbound alloc = { .dom = DOMID_SELF, .remote_dom = DOMID_SELF };
    expect("alloc_unbound", HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &alloc), 0);
    struct evtchn_status st = { .dom = DOMID_SELF, .port = alloc.port };
    expect("evtchn_status", HYPERVISOR_event_channel_op(EVTCHNOP_status, &st), 0);
    me = st.u.unbound.dom;

    for (int i = 0; i < 4096; i++) {
        p[i] = (unsigned char)(i * 7 + 1);
        q[i] = 0;
        r[i] = (unsigned char)(0xA0 + (i & 15));
    }
    memset(t, 0, PAGE_SIZE);
    expect("unmap_table", HYPERVISOR_update_va_mapping((unsigned long)t, 0, UVMF_INVLPG), 0);
    struct mmuext_op pin = { .cmd = MMUEXT_PIN_L1_TABLE, .arg1.mfn = tm };
    expect("pin_table", HYPERVISOR_mmuext_op(&pin, 1, 0, DOMID_SELF), 0);

    gnt[1] = (struct grant_entry_v1){ 0, me, pm };
    gnt[2] = (struct grant_entry_v1){ 0, me, rm };
    gnt[3] = (struct grant_entry_v1){ 0, me, tm };
    gnt[5] = (struct grant_entry_v1){ 0, 0, pm };               /* granted to dom0, not to us */
    wmb();
    gnt[1].flags = GTF_permit_access;
    gnt[2].flags = GTF_permit_access | GTF_readonly;
    gnt[3].flags = GTF_permit_access;
    gnt[5].flags = GTF_permit_access;

    unsigned long xen_mfn = (((unsigned long *)si->pt_base)[256] & 0x000ffffffffff000UL) >> PAGE_SHIFT;
    int frame_to_frame = op(DOMID_SELF, pm, 0, DOMID_SELF, qm, 100, 16, 0);
    int gref_to_frame = op(DOMID_SELF, 1, 32, DOMID_SELF, qm, 200, 8, GNTCOPY_source_gref);
    int frame_to_gref = op(DOMID_SELF, rm, 0, me, 1, 3000, 4, GNTCOPY_dest_gref);
    int to_readonly_grant = op(DOMID_SELF, pm, 0, DOMID_SELF, 2, 0, 8, GNTCOPY_dest_gref);
    int from_readonly_grant = op(me, 2, 4, DOMID_SELF, qm, 300, 4, GNTCOPY_source_gref);
    int to_page_table = op(DOMID_SELF, pm, 0, DOMID_SELF, tm, 0, 8, 0);
    int from_page_table = op(DOMID_SELF, tm, 0, DOMID_SELF, qm, 400, 8, 0);
    int to_page_table_grant = op(DOMID_SELF, pm, 0, DOMID_SELF, 3, 0, 8, GNTCOPY_dest_gref);
    int not_granted = op(DOMID_SELF, 4, 0, DOMID_SELF, qm, 0, 8, GNTCOPY_source_gref);
    int granted_to_dom0 = op(DOMID_SELF, 5, 0, DOMID_SELF, qm, 0, 8, GNTCOPY_source_gref);
    int ref_past_table = op(DOMID_SELF, 512, 0, DOMID_SELF, qm, 0, 8, GNTCOPY_source_gref);
    int frame_by_own_id = op(me, pm, 0, DOMID_SELF, qm, 0, 8, 0);
    int unknown_domain = op(7, 1, 0, DOMID_SELF, qm, 0, 8, GNTCOPY_source_gref);
    int from_dom0 = op(0, 1, 0, DOMID_SELF, qm, 0, 8, GNTCOPY_source_gref);
    int xen_frame = op(DOMID_SELF, xen_mfn, 0, DOMID_SELF, qm, 0, 8, 0);
    int past_ram = op(DOMID_SELF, pm, 0, DOMID_SELF, 0xfffffffUL, 0, 8, 0);
    int past_page = op(DOMID_SELF, pm, 4090, DOMID_SELF, qm, 0, 8, 0);
    int zero_length = op(9, 0xdead, 5000, 9, 0xbeef, 5000, 0, 0);

    expect("copy_batch", HYPERVISOR_grant_table_op(GNTTABOP_copy, ops, nops), 0);
    expect("frame_to_frame", ops[frame_to_frame].status, 0);
    expect("frame_to_frame_data", !memcmp(q + 100, p, 16), 1);
    expect("gref_to_frame", ops[gref_to_frame].status, 0);
    expect("gref_to_frame_data", !memcmp(q + 200, p + 32, 8), 1);
    expect("frame_to_gref", ops[frame_to_gref].status, 0);
    expect("frame_to_gref_data", !memcmp(p + 3000, r, 4), 1);
    expect("to_readonly_grant", ops[to_readonly_grant].status, GNTST_general_error);
    expect("readonly_grant_untouched", r[0] == 0xA0, 1);
    expect("from_readonly_grant", ops[from_readonly_grant].status, 0);
    expect("from_readonly_grant_data", !memcmp(q + 300, r + 4, 4), 1);
    expect("to_page_table", ops[to_page_table].status, GNTST_general_error);
    expect("from_page_table", ops[from_page_table].status, 0);
    expect("to_page_table_grant", ops[to_page_table_grant].status, GNTST_general_error);
    expect("not_granted", ops[not_granted].status, GNTST_general_error);
    expect("granted_to_dom0", ops[granted_to_dom0].status, GNTST_general_error);
    expect("ref_past_table", ops[ref_past_table].status, GNTST_bad_gntref);
    expect("frame_by_own_id", ops[frame_by_own_id].status, GNTST_permission_denied);
    expect("unknown_domain", ops[unknown_domain].status, GNTST_bad_domain);
    expect("from_dom0", ops[from_dom0].status, GNTST_general_error);
    expect("xen_frame", ops[xen_frame].status, GNTST_bad_page);
    expect("past_ram", ops[past_ram].status, GNTST_bad_page);
    expect("past_page", ops[past_page].status, GNTST_bad_copy_arg);
    expect("zero_length", ops[zero_length].status, 0);
    expect("grant_flags_after", gnt[1].flags == GTF_permit_access && gnt[2].flags == (GTF_permit_access | GTF_readonly),
           1);
    /* The table is still a table: it was read, never written. */
    expect("table_still_pinned_l1", HYPERVISOR_mmuext_op(&pin, 1, 0, DOMID_SELF), -EINVAL);
    pin.cmd = MMUEXT_UNPIN_TABLE;
    expect("unpin_table", HYPERVISOR_mmuext_op(&pin, 1, 0, DOMID_SELF), 0);

    /* The hypercall's own errors: the array unreadable, a count that is negative as an int. */
    expect("copy_unmapped_array", HYPERVISOR_grant_table_op(GNTTABOP_copy, (void *)0x7ff000000000UL, 1), -EFAULT);
    expect("copy_negative_count", HYPERVISOR_grant_table_op(GNTTABOP_copy, ops, 0x80000000U), -EINVAL);
    expect("copy_opaque_bits", HYPERVISOR_grant_table_op(GNTTABOP_copy | 0x1000, ops, 1), -EINVAL);
}
