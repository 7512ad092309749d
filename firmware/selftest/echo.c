/* Scenario `echo`: read lines from the console ring (waiting with SCHEDOP_poll on the console port, no
 * event callback needed) and echo them until "quit". */
#include "selftest.h"

void run_echo(void)
{
    unsigned long map_va = si->pt_base + (si->nr_pt_frames + 16) * PAGE_SIZE;
    HYPERVISOR_update_va_mapping(map_va, si->shared_info | 7, UVMF_INVLPG);
    struct shared_info *s = (struct shared_info *)map_va;
    evtchn_port_t port = si->console.domU.evtchn;
    char line[128];
    int len = 0;
    printk("echo: type lines, 'quit' to stop\n");
    for (;;) {
        char buf[64];
        int n;
        s->evtchn_pending[port / 64] &= ~(1UL << (port % 64));
        while ((n = console_ring_read(buf, sizeof(buf))) > 0) {
            for (int i = 0; i < n; i++) {
                if (buf[i] == '\n' || buf[i] == '\r') {
                    line[len] = 0;
                    if (!strcmp(line, "quit"))
                        return;
                    if (len)
                        printk("echo: %s\n", line);
                    len = 0;
                } else if (len < (int)sizeof(line) - 1) {
                    line[len++] = buf[i];
                }
            }
        }
        struct sched_poll poll = { .ports = &port, .nr_ports = 1, .timeout = 0 };
        HYPERVISOR_sched_op(SCHEDOP_poll, &poll);
    }
}
