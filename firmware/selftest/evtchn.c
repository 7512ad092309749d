/* Scenario `evtchn`: the 2-level event channel operations and their errnos, the pending/mask bits in
 * shared_info, and the port limit. */
#include "selftest.h"

#define EINVAL 22
#define ENOENT 2
#define EEXIST 17
#define ENOSPC 28

static long op(int cmd, void *arg) { return HYPERVISOR_event_channel_op(cmd, arg); }

static struct evtchn_status status(evtchn_port_t port, long *rc)
{
    struct evtchn_status st = { .dom = DOMID_SELF, .port = port };
    *rc = op(EVTCHNOP_status, &st);
    return st;
}

static int test_bit(const unsigned long *bits, unsigned port) { return (bits[port / 64] >> (port % 64)) & 1; }

void run_evtchn(void)
{
    long rc;
    unsigned long map_va = si->pt_base + (si->nr_pt_frames + 16) * PAGE_SIZE;
    HYPERVISOR_update_va_mapping(map_va, si->shared_info | 7, UVMF_INVLPG);
    struct shared_info *s = (struct shared_info *)map_va;
    struct vcpu_info *v = &s->vcpu_info[0];

    struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = DOMID_SELF };
    expect("alloc_unbound", op(EVTCHNOP_alloc_unbound, &au), 0);
    struct evtchn_bind_interdomain bi = { .remote_dom = DOMID_SELF, .remote_port = au.port };
    expect("bind_interdomain_self", op(EVTCHNOP_bind_interdomain, &bi), 0);
    evtchn_port_t a = au.port, b = bi.local_port;
    struct evtchn_status st = status(a, &rc);
    expect("status_a", rc == 0 && st.status == EVTCHNSTAT_interdomain && st.u.interdomain.port == b, 1);
    st = status(b, &rc);
    expect("status_b", rc == 0 && st.status == EVTCHNSTAT_interdomain && st.u.interdomain.port == a, 1);

    /* Masked: sending sets pending but raises no selector/upcall. Unmask: exactly one upcall request. */
    v->evtchn_upcall_pending = 0;
    v->evtchn_pending_sel = 0;
    s->evtchn_mask[a / 64] |= 1UL << (a % 64);
    struct evtchn_send send = { .port = b };
    expect("send_masked", op(EVTCHNOP_send, &send), 0);
    expect("pending_while_masked", test_bit(s->evtchn_pending, a), 1);
    expect("no_upcall_while_masked", v->evtchn_upcall_pending, 0);
    struct evtchn_unmask um = { .port = a };
    expect("unmask", op(EVTCHNOP_unmask, &um), 0);
    expect("upcall_after_unmask", v->evtchn_upcall_pending, 1);
    expect("selector_after_unmask", (v->evtchn_pending_sel >> (a / 64)) & 1, 1);
    s->evtchn_pending[a / 64] &= ~(1UL << (a % 64));

    struct evtchn_close cl = { .port = b };
    expect("close", op(EVTCHNOP_close, &cl), 0);
    st = status(a, &rc);
    expect("peer_unbound_after_close", rc == 0 && st.status == EVTCHNSTAT_unbound, 1);
    expect("close_again", op(EVTCHNOP_close, &cl), -EINVAL);
    send.port = b;
    expect("send_closed", op(EVTCHNOP_send, &send), -EINVAL);
    send.port = a;
    expect("send_unbound_dropped", op(EVTCHNOP_send, &send), 0);

    struct evtchn_bind_virq bv = { .virq = VIRQ_TIMER, .vcpu = 0 };
    expect("bind_virq_timer", op(EVTCHNOP_bind_virq, &bv), 0);
    expect("bind_virq_twice", op(EVTCHNOP_bind_virq, &bv), -EEXIST);
    bv.virq = VIRQ_CONSOLE;
    bv.vcpu = 1;
    expect("bind_global_virq_vcpu1", op(EVTCHNOP_bind_virq, &bv), -EINVAL);
    bv.virq = 99;
    bv.vcpu = 0;
    expect("bind_virq_out_of_range", op(EVTCHNOP_bind_virq, &bv), -EINVAL);
    bv.virq = VIRQ_DEBUG;
    bv.vcpu = 3;
    expect("bind_virq_no_such_vcpu", op(EVTCHNOP_bind_virq, &bv), -ENOENT);
    struct evtchn_bind_ipi ipi = { .vcpu = 0 };
    expect("bind_ipi", op(EVTCHNOP_bind_ipi, &ipi), 0);
    struct evtchn_bind_vcpu bvc = { .port = ipi.port, .vcpu = 1 };
    expect("bind_vcpu_no_such_vcpu", op(EVTCHNOP_bind_vcpu, &bvc), -ENOENT);
    expect("status_out_of_range", (status(5000, &rc), rc), -EINVAL);

    /* Allocate until the domain's port limit. */
    int n = 0;
    for (;;) {
        au.remote_dom = 0;
        rc = op(EVTCHNOP_alloc_unbound, &au);
        if (rc)
            break;
        n++;
    }
    expect("alloc_until_full", rc, -ENOSPC);
    printk("ports_allocated_until_full = %d\n", n);
    printk("last_port = %u\n", au.port);

    struct { domid_t dom; } reset = { DOMID_SELF };
    expect("reset", op(EVTCHNOP_reset, &reset), 0);
    st = status(si->console.domU.evtchn, &rc);
    hv_printf("console_port_after_reset = %u\n", st.status);
    send.port = si->console.domU.evtchn;
    hv_printf("send_console_after_reset = %ld\n", op(EVTCHNOP_send, &send));
}
