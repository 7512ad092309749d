/*
 * The shutdown thread, as Mini-OS's shutdown.c: watch control/shutdown, and when the toolstack writes a
 * request there, acknowledge it (write "") and shut down with the matching reason. A watch fires once when
 * it is set up, and again for our own acknowledgement: an empty value is not a request.
 */
#include "minios.h"

static const char *path = "control/shutdown";
static const char *token = "control/shutdown";
static xenbus_event_queue events;

static void app_shutdown(unsigned int reason)
{
    printk("Shutdown requested: %d\n", reason);
    HYPERVISOR_shutdown(reason);
}

static void shutdown_thread(void *p)
{
    char *shutdown, *err;
    unsigned int reason;

    free(xenbus_watch_path_token(XBT_NIL, path, token, &events));
    for (;;) {
        xenbus_wait_for_watch(&events);
        if ((err = xenbus_read(XBT_NIL, path, &shutdown))) {
            free(err);
            do_exit();
        }
        if (!strcmp(shutdown, "")) {
            free(shutdown);
            continue;
        } else if (!strcmp(shutdown, "poweroff")) {
            reason = SHUTDOWN_poweroff;
        } else if (!strcmp(shutdown, "reboot")) {
            reason = SHUTDOWN_reboot;
        } else if (!strcmp(shutdown, "suspend")) {
            reason = SHUTDOWN_suspend;
        } else {
            reason = SHUTDOWN_crash;
        }
        free(shutdown);
        if ((err = xenbus_write(XBT_NIL, path, ""))) {      /* acknowledge */
            free(err);
            do_exit();
        }
        if (reason == SHUTDOWN_suspend) {
            printk("Shutdown requested: %d (suspend is not supported: ignored)\n", reason);
            continue;
        }
        app_shutdown(reason);
    }
}

void init_shutdown(void)
{
    create_thread("shutdown", shutdown_thread, NULL);
}
