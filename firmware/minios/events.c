/*
 * Event channels, as Mini-OS's events.c, hypervisor.c and arch/x86/events.c: one handler per port, all
 * ports masked until someone binds them, the 2-level pending/selector scan in the upcall, and the
 * per-CPU area (reached through MSR_GS_BASE) that x86_64.S uses for the interrupt stack.
 */
#include "minios.h"

struct ev_action { evtchn_handler_t handler; void *data; uint32_t count; };
static struct ev_action ev_actions[NR_EVS];
static unsigned long bound_ports[NR_EVS / 64];

/* The per-CPU data x86_64.S reads at %gs:0 and %gs:8. */
static char irqstack[2 * STACK_SIZE] __attribute__((aligned(16)));
static struct pda { int irqcount; char *irqstackptr; } cpu0_pda;

static void default_handler(evtchn_port_t port, struct pt_regs *regs, void *ignore)
{
    printk("[Port %d] - event received\n", port);
}

void mask_evtchn(uint32_t port)
{
    synch_set_bit(port, &HYPERVISOR_shared_info->evtchn_mask[0]);
}

/* Unmask locally, and if the port is pending redo what Xen does on raise: selector bit, upcall. */
void unmask_evtchn(uint32_t port)
{
    struct shared_info *s = HYPERVISOR_shared_info;
    volatile struct vcpu_info *v = vcpu_info0();

    synch_clear_bit(port, &s->evtchn_mask[0]);
    if (synch_test_bit(port, &s->evtchn_pending[0]) &&
        !synch_test_and_set_bit(port / 64, &v->evtchn_pending_sel)) {
        v->evtchn_upcall_pending = 1;
        if (!irqs_disabled())
            force_evtchn_callback();
    }
}

void clear_evtchn(uint32_t port)
{
    synch_clear_bit(port, &HYPERVISOR_shared_info->evtchn_pending[0]);
}

int notify_remote_via_evtchn(evtchn_port_t port)
{
    struct evtchn_send op = { .port = port };
    return (int)HYPERVISOR_event_channel_op(EVTCHNOP_send, &op);
}

static void do_event(evtchn_port_t port, struct pt_regs *regs)
{
    clear_evtchn(port);
    if (port >= NR_EVS) {
        printk("WARN: do_event(): Port number too large: %d\n", port);
        return;
    }
    ev_actions[port].count++;
    ev_actions[port].handler(port, regs, ev_actions[port].data);
}

/* The upcall (x86_64.S, events masked): clear the master flag, take the selector word, and run every
   pending unmasked port, lowest first. */
void do_hypervisor_callback(struct pt_regs *regs)
{
    struct shared_info *s = HYPERVISOR_shared_info;
    volatile struct vcpu_info *v = vcpu_info0();
    unsigned long l1, l2, l1i, l2i;

    v->evtchn_upcall_pending = 0;
    l1 = xchg(&v->evtchn_pending_sel, 0);      /* xchg is a full barrier on x86 */
    while (l1) {
        l1i = __ffs(l1);
        l1 &= ~(1UL << l1i);
        while ((l2 = s->evtchn_pending[l1i] & ~s->evtchn_mask[l1i]) != 0) {
            l2i = __ffs(l2);
            do_event((evtchn_port_t)(l1i * 64 + l2i), regs);
        }
    }
}

evtchn_port_t bind_evtchn(evtchn_port_t port, evtchn_handler_t handler, void *data)
{
    if (ev_actions[port].handler != default_handler)
        printk("WARN: Handler for port %d already registered, replacing\n", port);
    ev_actions[port].data = data;
    wmb();
    ev_actions[port].handler = handler;
    synch_set_bit(port, bound_ports);
    return port;
}

/* Forget the port's handler and close it (Mini-OS's unbind_evtchn). */
void unbind_evtchn(evtchn_port_t port)
{
    struct evtchn_close op = { .port = port };
    mask_evtchn(port);
    clear_evtchn(port);
    ev_actions[port].handler = default_handler;
    wmb();
    ev_actions[port].data = NULL;
    synch_clear_bit(port, bound_ports);
    if (HYPERVISOR_event_channel_op(EVTCHNOP_close, &op))
        printk("WARN: close of port %d failed\n", port);
}

evtchn_port_t bind_virq(uint32_t virq, evtchn_handler_t handler, void *data)
{
    struct evtchn_bind_virq op = { .virq = virq, .vcpu = 0 };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &op);
    if (rc) {
        printk("Failed to bind virtual IRQ %d with rc=%ld\n", virq, rc);
        return (evtchn_port_t)-1;
    }
    bind_evtchn(op.port, handler, data);
    return op.port;
}

static void arch_init_events(void)
{
    /* Null fs/gs, then the per-CPU area through the (emulated) MSR write, as Mini-OS does. */
    __asm__ volatile("movl %0,%%fs; movl %0,%%gs" :: "r"(0));
    wrmsrl(0xc0000101, (uint64_t)(unsigned long)&cpu0_pda);      /* MSR_GS_BASE */
    cpu0_pda.irqcount = -1;
    cpu0_pda.irqstackptr = (char *)(((unsigned long)irqstack + 2 * STACK_SIZE) & ~(STACK_SIZE - 1));
}

/* Every port starts with the default handler and masked. */
void init_events(void)
{
    for (int i = 0; i < NR_EVS; i++) {
        ev_actions[i].handler = default_handler;
        mask_evtchn(i);
    }
    arch_init_events();
}
