/*
 * hello: the smallest useful Xen PV guest. It prints through the hypervisor console and through the PV
 * console ring (notifying dom0 with EVTCHNOP_send), checks a few hypercall results against the start_info
 * it was given, and powers off -- or crashes, if a check failed.
 */
#include "console.h"
#include "hypercall.h"
#include "lib.h"

static int passed, failed;

static void check(const char *what, int ok)
{
    printk("hello: check %-28s %s\n", what, ok ? "ok" : "FAILED");
    if (ok)
        passed++;
    else
        failed++;
}

void guest_main(struct start_info *si)
{
    char extra[16];
    long version;

    virt_base = VIRT_BASE;
    phys_to_machine_mapping = (unsigned long *)si->mfn_list;
    hv_printf("hello: booting (hypervisor console only)\n");

    console_ring_init(mfn_to_virt(si->console.domU.mfn), si->console.domU.evtchn);
    version = HYPERVISOR_xen_version(XENVER_version, 0);
    HYPERVISOR_xen_version(XENVER_extraversion, extra);
    printk("hello: Hello from a Xen PV guest on Xen %ld.%ld%s!\n", version >> 16, version & 0xffff, extra);
    printk("hello: %lu MiB, start_info at %p, console on port %u, xenstore on port %u\n",
           si->nr_pages >> 8, (void *)si, si->console.domU.evtchn, si->store_evtchn);

    check("start_info magic", !strncmp(si->magic, "xen-3.0-x86_64", 14));
    check("hypercall page filled", (unsigned char)hypercall_page[0] != 0xc3);
    check("xen_version >= 3.0", (version >> 16) >= 3);
    check("pagesize is 4096", HYPERVISOR_xen_version(XENVER_pagesize, 0) == 4096);
    check("current_reservation", HYPERVISOR_memory_op(XENMEM_current_reservation,
                                                      &(domid_t){DOMID_SELF}) == (long)si->nr_pages);
    struct evtchn_status st = { .dom = DOMID_SELF, .port = si->console.domU.evtchn };
    check("console port bound to dom0", HYPERVISOR_event_channel_op(EVTCHNOP_status, &st) == 0
          && st.status == EVTCHNSTAT_interdomain && st.u.interdomain.dom == 0);
    check("M2P maps the console frame", virt_to_mfn(mfn_to_virt(si->console.domU.mfn)) == si->console.domU.mfn);

    printk("hello: %d/%d checks passed, %s\n", passed, passed + failed, failed ? "crashing" : "powering off");
    HYPERVISOR_shutdown(failed ? SHUTDOWN_crash : SHUTDOWN_poweroff);
    for (;;)
        ;
}
