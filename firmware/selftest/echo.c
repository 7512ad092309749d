/* Scenario `echo [prompt|spin]`: read lines from the console ring and echo them until "quit".
 *   echo          wait with SCHEDOP_poll on the console port and no timeout (no event callback needed)
 *   echo prompt   print an `echo> ` prompt (no newline) and wait with a 10 ms poll timeout, as a shell
 *                 whose kernel keeps a timer ticking
 *   echo spin     print the prompt and busy-poll the ring with SCHEDOP_yield in between, as GRUB does */
#include "selftest.h"

static unsigned long now_ns(void)       /* the TSC runs at 1 GHz under miniguest */
{
    unsigned int lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((unsigned long)hi << 32) | lo;
}

void run_echo(void)
{
    const char *mode = strchr(si->cmd_line, ' ');
    int prompt = mode && !strcmp(mode + 1, "prompt");
    int spin = mode && !strcmp(mode + 1, "spin");
    unsigned long map_va = si->pt_base + (si->nr_pt_frames + 16) * PAGE_SIZE;
    HYPERVISOR_update_va_mapping(map_va, si->shared_info | 7, UVMF_INVLPG);
    struct shared_info *s = (struct shared_info *)map_va;
    evtchn_port_t port = si->console.domU.evtchn;
    char line[128];
    int len = 0;
    printk("echo: type lines, 'quit' to stop\n");
    if (prompt || spin)
        printk("echo> ");
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
                        printk("%secho: %s\n", prompt || spin ? "\n" : "", line);
                    if (len && (prompt || spin))
                        printk("echo> ");
                    len = 0;
                } else if (len < (int)sizeof(line) - 1) {
                    line[len++] = buf[i];
                }
            }
        }
        if (spin) {
            HYPERVISOR_sched_op(SCHEDOP_yield, 0);
            continue;
        }
        struct sched_poll poll = { .ports = &port, .nr_ports = 1, .timeout = 0 };
        if (prompt)
            poll.timeout = now_ns() + 10000000;      /* 10 ms: a tick, as a kernel with a timer */
        HYPERVISOR_sched_op(SCHEDOP_poll, &poll);
    }
}
