/*
 * The application, as Mini-OS's test.c: a xenbus self-test thread (ls, read, write, rm -- a removed node
 * reads as ENOENT --, printf/scanf, a transaction retried on EAGAIN, a watch with its token), a thread that
 * watches memory/target and reports each new target, and the periodic thread printing the time every
 * second. After `ticks=N` periodic lines (default 3; 0 = forever) the domain powers off.
 */
#include "minios.h"

static int xb_passed, xb_failed;

static void check(const char *what, int ok)
{
    if (ok)
        xb_passed++;
    else
        xb_failed++;
    printk("xenbus: %s %s\n", what, ok ? "ok" : "FAILED");
}

static void do_ls_test(const char *pre)
{
    char **dirs, *msg;
    printk("ls %s...\n", pre);
    msg = xenbus_ls(XBT_NIL, pre, &dirs);
    if (msg) {
        printk("Error in xenbus ls: %s\n", msg);
        free(msg);
        return;
    }
    for (int x = 0; dirs[x]; x++) {
        printk("ls %s[%d] -> %s\n", pre, x, dirs[x]);
        free(dirs[x]);
    }
    free(dirs);
}

/* Returns the value read (malloc()ed) or NULL; *error gets the error name if there was one. */
static char *do_read_test(const char *path, char **error)
{
    char *res, *msg;
    printk("Read %s...\n", path);
    msg = xenbus_read(XBT_NIL, path, &res);
    if (msg) {
        printk("Error in xenbus read: %s\n", msg);
        if (error)
            *error = msg;
        else
            free(msg);
        return NULL;
    }
    printk("Read %s -> %s.\n", path, res);
    return res;
}

static int do_write_test(const char *path, const char *val)
{
    char *msg;
    printk("Write %s to %s...\n", val, path);
    msg = xenbus_write(XBT_NIL, path, val);
    if (msg) {
        printk("Result %s\n", msg);
        free(msg);
        return 0;
    }
    printk("Success.\n");
    return 1;
}

static int do_rm_test(const char *path)
{
    char *msg;
    printk("rm %s...\n", path);
    msg = xenbus_rm(XBT_NIL, path);
    if (msg) {
        printk("Result %s\n", msg);
        free(msg);
        return 0;
    }
    printk("Success.\n");
    return 1;
}

static int read_equals(const char *path, const char *want)
{
    char *v = do_read_test(path, NULL);
    int ok = v && !strcmp(v, want);
    free(v);
    return ok;
}

static void xenbus_tester(void *p)
{
    char *name, *err = NULL, *msg;
    unsigned long value;
    domid_t domid;

    printk("Doing xenbus test.\n");
    domid = xenbus_get_self_id();
    msg = xenbus_read(XBT_NIL, "name", &name);
    printk("We are domain %d, name %s\n", domid, msg ? msg : name);
    check("read domid and name", !msg && domid != DOMID_SELF);
    free(msg);
    free(name);

    printk("Doing ls test.\n");
    do_ls_test("memory");
    do_ls_test("control");

    printk("Doing read test.\n");
    free(do_read_test("memory/target", NULL));
    free(do_read_test("console/type", NULL));

    printk("Doing write test.\n");
    check("write and read back", do_write_test("data/flibble", "flobble") && read_equals("data/flibble", "flobble") &&
          do_write_test("data/flibble", "widget") && read_equals("data/flibble", "widget"));

    printk("Doing rm test.\n");
    int removed = do_rm_test("data/flibble");
    char *v = do_read_test("data/flibble", &err);
    printk("(Should have said ENOENT)\n");
    check("rm, then read gives ENOENT", removed && !v && err && !strcmp(err, "ENOENT"));
    free(v);
    free(err);

    printk("Doing printf/scanf test.\n");
    msg = xenbus_printf(XBT_NIL, "data", "counter", "%d", 42);
    check("printf 42, scanf", !msg && xenbus_scanf(XBT_NIL, "data", "counter", &value) == 1 && value == 42);
    free(msg);

    /* A transaction that conflicts once: the first attempt's counter is changed behind its back. */
    printk("Doing transaction test.\n");
    int attempt = 0, retry;
    xenbus_transaction_t xbt;
    do {
        attempt++;
        if ((msg = xenbus_transaction_start(&xbt))) {
            printk("transaction start: %s\n", msg);
            free(msg);
            break;
        }
        if (xenbus_scanf(xbt, "data", "counter", &value) != 1)
            value = 0;
        if (attempt == 1)
            free(xenbus_printf(XBT_NIL, "data", "counter", "%lu", value + 100));
        free(xenbus_printf(xbt, "data", "counter", "%lu", value + 1));
        msg = xenbus_transaction_end(xbt, 0, &retry);
        printk("transaction %u, attempt %d: %s\n", xbt, attempt, msg ? msg : retry ? "EAGAIN, retrying" : "committed");
        free(msg);
    } while (retry && attempt < 5);
    check("transaction retried on EAGAIN", attempt == 2 && xenbus_scanf(XBT_NIL, "data", "counter", &value) == 1 &&
          value == 143);

    /* A watch fires once when set, then on each write; its events carry our path and token. */
    printk("Doing watch test.\n");
    xenbus_event_queue q = NULL;
    msg = xenbus_watch_path_token(XBT_NIL, "data/watched", "token-7", &q);
    char **first = xenbus_wait_for_watch_return(&q);
    printk("watch fired: %s token %s\n", first[0], first[1]);
    int ok = !msg && !strcmp(first[0], "data/watched") && !strcmp(first[1], "token-7");
    free(first);
    free(msg);
    free(xenbus_write(XBT_NIL, "data/watched", "1"));
    char **second = xenbus_wait_for_watch_return(&q);
    printk("watch fired: %s token %s\n", second[0], second[1]);
    ok = ok && !strcmp(second[0], "data/watched") && !strcmp(second[1], "token-7");
    free(second);
    msg = xenbus_unwatch_path_token(XBT_NIL, "data/watched", "token-7");
    check("watch with token", ok && !msg);
    free(msg);

    /* More requests than there are ids: each reply must come back with the id it was sent with. */
    int reads_ok = 1;
    for (int i = 0; i < 40; i++) {
        char *val;
        msg = xenbus_read(XBT_NIL, "domid", &val);
        reads_ok = reads_ok && !msg && strtoul(val, NULL, 10) == domid;
        free(msg);
        free(val);
    }
    check("40 requests through 32 ids", reads_ok);

    printk("xenbus test %s: %d/%d checks ok\n", xb_failed ? "FAILED" : "passed", xb_passed, xb_passed + xb_failed);
    free(xenbus_write(XBT_NIL, "data/xenbus-test", xb_failed ? "failed" : "passed"));
}

/* Report the memory target the toolstack sets (xl mem-set writes memory/target). */
static void memory_target_thread(void *p)
{
    static xenbus_event_queue events;
    unsigned long kib;
    int first = 1;

    free(xenbus_watch_path_token(XBT_NIL, "memory/target", "memory/target", &events));
    for (;;) {
        xenbus_wait_for_watch(&events);
        if (xenbus_scanf(XBT_NIL, "memory", "target", &kib) != 1)
            continue;
        printk(first ? "Memory target is %lu KiB\n" : "New memory target: %lu KiB\n", kib);
        first = 0;
    }
}

extern volatile int blk_test_running;
extern struct wait_queue_head blk_test_done;
int start_blk_test(void);

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
    wait_event(blk_test_done, !blk_test_running);         /* let the block test finish */
    printk("Periodic thread done after %lu ticks: powering off.\n", ticks);
    HYPERVISOR_shutdown(SHUTDOWN_poweroff);
}

/* `xsbench=N`: N write + read round trips through the xenstore ring, for tools/bench.py. */
static void xenstore_bench_thread(void *p)
{
    unsigned long n = (unsigned long)p;
    char value[24], *got = NULL, *err;
    s_time_t t0 = NOW();

    for (unsigned long i = 0; i < n; i++) {
        snprintf(value, sizeof(value), "%lu", i);
        free(xenbus_write(XBT_NIL, "data/bench", value));
        err = xenbus_read(XBT_NIL, "data/bench", &got);
        if (err || strcmp(got, value)) {
            printk("xenstore bench: round trip %lu failed\n", i);
            HYPERVISOR_shutdown(SHUTDOWN_crash);
        }
        free(got);
    }
    printk("xenstore bench: %lu round trips in %lu us of guest time\n", n, (unsigned long)((NOW() - t0) / 1000));
    HYPERVISOR_shutdown(SHUTDOWN_poweroff);
}

int net_app_main(void);

int app_main(void *p)
{
    const char *bench = cmdline_value("xsbench");

    if (net_app_main())                 /* net=echo / net=bench: the network test (nettest.c) */
        return 0;

    if (bench) {
        create_thread("xenstore_bench", xenstore_bench_thread, (void *)strtoul(bench, NULL, 10));
        return 0;
    }
    printk("Dummy main: par=%p\n", p);
    if (start_blk_test())
        return 0;                       /* blkbench: nothing else runs */
    create_thread("xenbus_tester", xenbus_tester, NULL);
    create_thread("memory_target", memory_target_thread, NULL);
    create_thread("periodic_thread", periodic_thread, NULL);
    return 0;
}
