/*
 * minigaps: behaviour upstream Mini-OS relies on, found by booting a real Mini-OS under miniguest
 * (tests/test_minios_upstream_gaps.py). `minigaps WHAT` runs one case.
 *
 *   partial  printk an unfinished line (it reaches both the hypervisor console and the PV ring, as
 *            Mini-OS's printk does for console input it echoes), go idle, then finish the line: the
 *            user sees the unfinished part once, not once per source.
 */
#include "selftest.h"

static void idle_ms(unsigned long ms)
{
    unsigned int lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    unsigned long now = ((unsigned long)hi << 32) | lo;
    struct sched_poll poll = { .ports = 0, .nr_ports = 0, .timeout = now + ms * 1000000UL };
    HYPERVISOR_sched_op(SCHEDOP_poll, &poll);
}

static void partial_line(void)
{
    printk("minigaps: echo> ");
    idle_ms(5);                       /* the guest is idle: its unfinished line is shown */
    printk("h");
    idle_ms(5);
    printk("ello\n");
}

void run_minigaps(const char *what)
{
    if (!strcmp(what, "partial"))
        partial_line();
    else {
        printk("minigaps: unknown case '%s'\n", what);
        failures++;
    }
}
