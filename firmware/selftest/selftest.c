/*
 * selftest: a test guest for miniguest's own test suite. The first word of the command line picks a
 * scenario; each prints `name = value` facts and `ok`/`FAIL` lines the tests compare against what the
 * domain builder and the hypervisor are supposed to have done, then powers off (or crashes, hangs, ...).
 */
#include "selftest.h"

struct start_info *si;
unsigned long entry_rsp;
int failures;
static volatile unsigned long bss_probe[64];

void expect(const char *what, long got, long want)
{
    if (got == want)
        printk("%s = %ld ok\n", what, got);
    else {
        printk("%s = %ld FAIL (want %ld)\n", what, got, want);
        failures++;
    }
}

/* The TSC runs at 1 GHz under miniguest (vcpu_time_info says so: mul 2^31, shift 1). */
static unsigned long rdtsc_ns(void)
{
    unsigned int lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((unsigned long)hi << 32) | lo;
}

static int is(const char *word)
{
    size_t n = strlen(word);
    return !strncmp(si->cmd_line, word, n) && (si->cmd_line[n] == 0 || si->cmd_line[n] == ' ');
}

static void finish(void)
{
    printk("selftest: %d failures\n", failures);
    HYPERVISOR_shutdown(failures ? SHUTDOWN_crash : SHUTDOWN_poweroff);
}

void guest_main(struct start_info *start)
{
    si = start;
    virt_base = VIRT_BASE;
    phys_to_machine_mapping = (unsigned long *)si->mfn_list;
    console_ring_init(mfn_to_virt(si->console.domU.mfn), si->console.domU.evtchn);
    printk("selftest: scenario '%s'\n", si->cmd_line);

    if (is("layout")) {
        unsigned long nonzero = 0;
        for (unsigned i = 0; i < ARRAY_SIZE(bss_probe); i++)
            nonzero |= bss_probe[i];
        expect("bss_zero", nonzero == 0, 1);
        run_layout();
    } else if (is("bench")) {
        /* bench WHAT N */
        char *what = strchr(si->cmd_line, ' ');
        char *num = what ? strchr(what + 1, ' ') : 0;
        if (what && num) {
            *num = 0;
            run_bench(what + 1, strtoul(num + 1, 0, 0));
        }
    } else if (is("sleep")) {
        /* sleep MS: SCHEDOP_poll on no ports with a timeout is a plain sleep until that system time. */
        unsigned long ms = strtoul(si->cmd_line + 6, 0, 0);
        unsigned long t0 = rdtsc_ns();
        struct sched_poll poll = { .ports = 0, .nr_ports = 0, .timeout = t0 + ms * 1000000UL };
        long rc = HYPERVISOR_sched_op(SCHEDOP_poll, &poll);
        unsigned long t1 = rdtsc_ns();
        printk("slept: rc=%ld elapsed_ns=%lu\n", rc, t1 - t0);
    } else if (is("evtchn")) {
        run_evtchn();
        hv_printf("selftest: %d failures\n", failures);
        HYPERVISOR_shutdown(failures ? SHUTDOWN_crash : SHUTDOWN_poweroff);
    } else if (is("segments")) {
        run_segments();
    } else if (is("grow")) {
        run_grow();
    } else if (is("rdtsc")) {
        /* Two reads three instructions apart, in one translated block: the TSC counts instructions. */
        unsigned int a1, d1, a2, d2;
        __asm__ volatile("rdtsc\n\tmov %%eax, %0\n\tmov %%edx, %1\n\trdtsc"
                         : "=&r"(a1), "=&r"(d1), "=a"(a2), "=d"(d2));
        unsigned long t1 = ((unsigned long)d1 << 32) | a1, t2 = ((unsigned long)d2 << 32) | a2;
        expect("rdtsc_delta", t2 - t1, 3);
        unsigned long prev = rdtsc_ns(), backwards = 0;
        for (int i = 0; i < 1000; i++) {
            unsigned long now = rdtsc_ns();
            backwards += now <= prev;
            prev = now;
        }
        expect("rdtsc_not_increasing", backwards, 0);
    } else if (is("echo")) {
        run_echo();
    } else if (is("hypercalls")) {
        run_hypercalls();
    } else if (is("xtfgaps")) {
        run_xtfgaps();
    } else if (is("xtfgaps2")) {
        run_xtfgaps2();
    } else if (is("suspend")) {
        HYPERVISOR_shutdown(SHUTDOWN_suspend);
    } else if (is("watchdog")) {
        /* Arm a 2-second watchdog and never feed it: the domain is shut down with SHUTDOWN_watchdog. */
        struct { uint32_t id, timeout; } wd = { 0, 2 };
        long id = HYPERVISOR_sched_op(6, &wd);
        printk("watchdog id = %ld\n", id);
        struct sched_poll poll = { .ports = 0, .nr_ports = 0, .timeout = 10000000000UL };
        for (;;)
            HYPERVISOR_sched_op(SCHEDOP_poll, &poll);     /* sleep: the watchdog fires at 2 s */
    } else if (is("usermode")) {
        run_usermode();
    } else if (is("badptr")) {
        run_badptr();
    } else if (is("mmu")) {
        run_mmu();
    } else if (is("hostile")) {
        run_hostile();
    } else if (is("gntcopy")) {
        run_gntcopy();
    } else if (is("ptwr")) {
        run_ptwr();
    } else if (is("balloon")) {
        run_balloon();
    } else if (is("minigaps")) {
        char *what = strchr(si->cmd_line, ' ');
        run_minigaps(what ? what + 1 : "");
    } else if (is("xtf")) {
        /* xtf RESULT [warn]: end the way an XTF test does (common/report.c), for the pytest plugin's tests. */
        char *res = strchr(si->cmd_line, ' ');
        char *warn = res ? strchr(res + 1, ' ') : 0;
        if (warn)
            *warn = 0;
        printk("--- Xen Test Framework ---\nEnvironment: PV 64bit (Long mode 4 levels)\n");
        printk("Test result: %s%s\n", res ? res + 1 : "SUCCESS", warn ? " with warnings" : "");
        HYPERVISOR_shutdown(SHUTDOWN_poweroff);
    } else if (is("earlyfault")) {
        printk("selftest: touching an unmapped address with no trap table\n");
        *(volatile unsigned long *)0x7ff000000000UL = 1;
    } else if (is("reboot")) {
        HYPERVISOR_shutdown(SHUTDOWN_reboot);
    } else if (is("crash")) {
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    } else if (is("spin")) {
        for (;;)
            barrier();
    } else if (is("hang")) {
        /* Mask every port and drop what is pending, stop both timers: then nothing can wake us. */
        unsigned long map_va = si->pt_base + (si->nr_pt_frames + 16) * PAGE_SIZE;
        HYPERVISOR_update_va_mapping(map_va, si->shared_info | 7, UVMF_INVLPG);
        struct shared_info *s = (struct shared_info *)map_va;
        memset(s->evtchn_mask, 0xff, sizeof(s->evtchn_mask));
        memset(s->evtchn_pending, 0, sizeof(s->evtchn_pending));
        s->vcpu_info[0].evtchn_pending_sel = 0;
        s->vcpu_info[0].evtchn_upcall_pending = 0;
        HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, 0);
        HYPERVISOR_set_timer_op(0);
        HYPERVISOR_sched_op(SCHEDOP_block, 0);
        printk("selftest: woke up from a block that nothing could end\n");
    } else if (is("consolecorrupt")) {
        struct xencons_interface *r = mfn_to_virt(si->console.domU.mfn);
        r->out_prod = r->out_cons + 100000;
        struct evtchn_send send = { .port = si->console.domU.evtchn };
        HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
        hv_printf("selftest: still running after corrupting the console ring\n");
        HYPERVISOR_shutdown(SHUTDOWN_poweroff);
    } else {
        printk("selftest: unknown scenario\n");
        failures++;
    }
    finish();
    for (;;)
        ;
}
