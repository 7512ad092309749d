/*
 * start_kernel, as Mini-OS's kernel.c: bring the subsystems up in Mini-OS's
 * order, start the threads, and hand the CPU to the idle thread.
 *
 * The application is in test.c.
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

int app_main(void *p);

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
