/*
 * The console, as Mini-OS's console/console.c and console/xencons_ring.c.
 *
 * printk formats a line and, until init_console has run, writes it both to Xen's emergency console
 * (console_io) and to the PV console ring without notifying dom0 (the event channel is not bound yet);
 * from then on it goes to the ring only, with a notification. On the ring every "\n" becomes "\r\n", as
 * a terminal wants it. dom0's console daemon shows each line once (it matches the early console_io lines
 * with the same lines arriving on the ring).
 */
#include "minios.h"

static struct xencons_interface *cons_ring;
uint32_t console_evtchn;
static int console_initialised;

void get_console(struct start_info *si)
{
    cons_ring = mfn_to_virt(si->console.domU.mfn);
    console_evtchn = si->console.domU.evtchn;
}

/* Put bytes on the out ring. Before the console is initialised nothing may block or notify; a chunk that
   does not fit whole is dropped (it reached the emergency console anyway). */
static int xencons_ring_send(const char *data, unsigned int len, int can_wait)
{
    struct xencons_interface *intf = cons_ring;
    XENCONS_RING_IDX cons, prod;
    unsigned int sent = 0;

    if (!intf)
        return 0;
    cons = intf->out_cons;
    prod = intf->out_prod;
    mb();
    if (!can_wait && prod - cons + len > sizeof(intf->out))
        return 0;
    while (sent < len) {
        if (prod - cons >= sizeof(intf->out)) {
            /* Full: let dom0 drain it (the ring is served as soon as it is notified). */
            wmb();
            intf->out_prod = prod;
            notify_remote_via_evtchn(console_evtchn);
            cons = intf->out_cons;
            mb();
            continue;
        }
        intf->out[prod++ % sizeof(intf->out)] = data[sent++];
    }
    wmb();
    intf->out_prod = prod;
    return (int)sent;
}

/* Send a formatted buffer to the ring, turning each "\n" into "\r\n". */
static void console_print(const char *data, int length)
{
    int notify = console_initialised;
    const char *start = data;
    if (!notify && cons_ring) {
        /* Early: all of it or nothing, so the ring never holds half a line. */
        unsigned int need = (unsigned int)length;
        for (const char *p = data; p < data + length; p++)
            need += *p == '\n';
        if (cons_ring->out_prod - cons_ring->out_cons + need > sizeof(cons_ring->out))
            return;
    }
    for (const char *p = data; p < data + length; p++) {
        if (*p == '\n') {
            if (p > start)
                xencons_ring_send(start, (unsigned int)(p - start), notify);
            xencons_ring_send("\r\n", 2, notify);
            start = p + 1;
        }
    }
    if (start < data + length)
        xencons_ring_send(start, (unsigned int)(data + length - start), notify);
    if (notify)
        notify_remote_via_evtchn(console_evtchn);
}

static void print(int direct, const char *fmt, va_list args)
{
    static char buf[1024];
    int n = vsnprintf(buf, sizeof(buf), fmt, args);
    if (n >= (int)sizeof(buf))
        n = sizeof(buf) - 1;
    if (direct || !console_initialised)
        (void)HYPERVISOR_console_io(CONSOLEIO_write, n, buf);
    if (!direct)
        console_print(buf, n);
}

void printk(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    print(0, fmt, args);
    va_end(args);
}

/* The emergency console only (Xen's console_io). */
void xprintk(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    print(1, fmt, args);
    va_end(args);
}

/* Console input: dom0 fills the in ring; we consume it (minios has no shell) and acknowledge. */
static void console_handle_input(evtchn_port_t port, struct pt_regs *regs, void *data)
{
    struct xencons_interface *intf = cons_ring;
    XENCONS_RING_IDX cons = intf->in_cons, prod = intf->in_prod;
    rmb();
    if (cons != prod) {
        mb();
        intf->in_cons = prod;
        notify_remote_via_evtchn(console_evtchn);
    }
}

void init_console(void)
{
    printk("Initialising console ... ");
    bind_evtchn(console_evtchn, console_handle_input, NULL);
    unmask_evtchn(console_evtchn);
    /* The early output sat on the ring unannounced: tell dom0 now. */
    notify_remote_via_evtchn(console_evtchn);
    console_initialised = 1;
    printk("done.\n");
}
