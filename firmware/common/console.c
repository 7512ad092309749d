/* Console output for the sample guests: the hypervisor console and the PV console ring. */
#include <stdarg.h>
#include "console.h"
#include "hypercall.h"
#include "lib.h"

unsigned long virt_base;
unsigned long *phys_to_machine_mapping;
static struct xencons_interface *cons_ring;
static evtchn_port_t cons_port;

void *mfn_to_virt(unsigned long mfn)
{
    const unsigned long *m2p = (const unsigned long *)MACH2PHYS_VIRT_START;
    return (void *)(virt_base + (m2p[mfn] << PAGE_SHIFT));
}

unsigned long virt_to_mfn(const void *va)
{
    return phys_to_machine_mapping[((unsigned long)va - virt_base) >> PAGE_SHIFT];
}

void hv_write(const char *s, int len)
{
    HYPERVISOR_console_io(CONSOLEIO_write, len, s);
}

void hv_printf(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    hv_write(buf, n < (int)sizeof(buf) ? n : (int)sizeof(buf) - 1);
}

void console_ring_init(struct xencons_interface *ring, evtchn_port_t port)
{
    cons_ring = ring;
    cons_port = port;
}

static void notify(void)
{
    struct evtchn_send send = { .port = cons_port };
    HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
}

void console_ring_write(const char *s, int len)
{
    struct xencons_interface *r = cons_ring;
    if (!r)
        return;
    while (len > 0) {
        XENCONS_RING_IDX cons = r->out_cons, prod = r->out_prod;
        rmb();
        int space = (int)sizeof(r->out) - (int)(prod - cons);
        if (space <= 0) {
            notify();
            HYPERVISOR_sched_op(SCHEDOP_yield, 0);
            continue;
        }
        int n = len < space ? len : space;
        for (int i = 0; i < n; i++)
            r->out[(prod + i) % sizeof(r->out)] = s[i];
        wmb();
        r->out_prod = prod + n;
        s += n;
        len -= n;
        notify();
    }
}

int console_ring_read(char *buf, int len)
{
    struct xencons_interface *r = cons_ring;
    int n = 0;
    if (!r)
        return 0;
    XENCONS_RING_IDX cons = r->in_cons, prod = r->in_prod;
    rmb();
    while (cons != prod && n < len)
        buf[n++] = r->in[cons++ % sizeof(r->in)];
    mb();
    r->in_cons = cons;
    notify();
    return n;
}

void printk(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof(buf))
        n = sizeof(buf) - 1;
    hv_write(buf, n);
    console_ring_write(buf, n);
}
