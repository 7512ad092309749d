/*
 * start_kernel and the application, as Mini-OS's kernel.c and test.c: bring the subsystems up in Mini-OS's
 * order, start the threads, and hand the CPU to the idle thread.
 *
 * The application is Mini-OS's periodic thread: a "T(s=.. us=..)" line every second of (virtual) time.
 * After `ticks=N` lines (default 3; 0 = forever) it powers the domain off.
 */
#include "minios.h"

uint8_t xen_features[32 * 1];

static void setup_xen_features(void)
{
    struct xen_feature_info fi;
    for (unsigned int i = 0; i < 1; i++) {
        fi.submap_idx = i;
        if (HYPERVISOR_xen_version(XENVER_get_features, &fi) < 0)
            break;
        for (int j = 0; j < 32; j++)
            xen_features[i * 32 + j] = !!(fi.submap & (1U << j));
    }
}

static void periodic_thread(void *p)
{
    const char *arg = cmdline_value("ticks");
    unsigned long ticks = arg ? strtoul(arg, NULL, 10) : 3;
    struct timeval tv;

    printk("Periodic thread started.\n");
    for (unsigned long n = 1;; n++) {
        gettimeofday(&tv, NULL);
        printk("T(s=%ld us=%ld)\n", tv.tv_sec, tv.tv_usec);
        if (ticks && n == ticks)
            break;
        msleep(1000);
    }
    printk("Periodic thread done after %lu ticks: powering off.\n", ticks);
    HYPERVISOR_shutdown(SHUTDOWN_poweroff);
}

static int app_main(void *p)
{
    printk("Dummy main: par=%p\n", p);
    run_xenbus_tests();
    create_thread("periodic_thread", periodic_thread, NULL);
    return 0;
}

void start_kernel(void)
{
    /* Set up events, then turn them on: they were masked at start of day. */
    init_events();
    local_irq_enable();
    setup_xen_features();
    init_mm();
    init_time();
    init_console();
    init_gnttab();
    init_sched();
    init_xenbus();
    init_shutdown();
    app_main(NULL);
    run_idle_thread();
}
