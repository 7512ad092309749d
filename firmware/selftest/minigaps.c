/*
 * minigaps: behaviour upstream Mini-OS relies on, found by booting a real Mini-OS under miniguest
 * (tests/test_minios_upstream_gaps.py). `minigaps WHAT` runs one case.
 *
 *   partial  printk an unfinished line (it reaches both the hypervisor console and the PV ring, as
 *            Mini-OS's printk does for console input it echoes), go idle, then finish the line: the
 *            user sees the unfinished part once, not once per source.
 *   wallclock  print the shared_info wallclock (Mini-OS's gettimeofday is wc + system time): under
 *            --realtime it is the host's time of day, as Xen's is dom0's.
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

static void wallclock(void)
{
    unsigned long map_va = si->pt_base + (si->nr_pt_frames + 16) * PAGE_SIZE;
    HYPERVISOR_update_va_mapping(map_va, si->shared_info | 7, UVMF_INVLPG);
    volatile struct shared_info *s = (volatile struct shared_info *)map_va;
    unsigned int version, sec, hi;
    do {
        version = s->wc_version;
        barrier();
        sec = s->wc_sec;
        hi = s->wc_sec_hi;
        barrier();
    } while ((version & 1) || version != s->wc_version);
    printk("wc_sec = %lu\n", ((unsigned long)hi << 32) | sec);
}

void run_minigaps(const char *what)
{
    if (!strcmp(what, "partial"))
        partial_line();
    else if (!strcmp(what, "wallclock"))
        wallclock();
    else {
        printk("minigaps: unknown case '%s'\n", what);
        failures++;
    }
}
