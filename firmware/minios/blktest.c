/*
 * The block test, after Mini-OS's blkfront_thread in test.c, made deterministic and finite so a test can
 * check its output: with a disk in device/vbd it
 *   - connects to the first one and prints its size, mode and flags;
 *   - reads the first and last sector with both requests in flight and prints a checksum of each;
 *   - on a writable disk: writes 16 pages at spread-out sectors with all 16 in flight, flushes, reads them
 *     back (16 in flight) and compares; does the same with one 11-segment (44 KiB) request; leaves a text
 *     marker in sector 2 that a test can find in the image file;
 *   - reads one sector past the end and expects the backend's error;
 *   - shuts the device down as Mini-OS does (Closing, Closed, Initialising), connects again and reads the
 *     marker (or sector 0) back through the new connection;
 * and prints "blk test passed" or "blk test FAILED", also written to data/blk-test.
 *
 * `blkbench=MODE,N` instead runs one benchmark phase for tools/bench_blk.py and powers off: seqread/seqwrite
 * N MiB in 44 KiB requests, randread/randwrite N requests of 4 KiB, the ring kept full; `none` only
 * connects (the baseline).
 */
#include "minios.h"
#include "blkfront.h"

volatile int blk_test_running;
DECLARE_WAIT_QUEUE_HEAD(blk_test_done);

static void blk_test_finished(void)
{
    blk_test_running = 0;
    wake_up(&blk_test_done);
}
static int passed, failed;
static uint32_t rnd_state = 0x2545F491;
static const char MARKER[] = "miniguest minios blkfront was here\n";

static uint32_t rnd(void)
{
    rnd_state = rnd_state * 1103515245u + 12345u;
    return rnd_state >> 8;
}

static void check(const char *what, int ok)
{
    if (ok)
        passed++;
    else
        failed++;
    printk("blk: %s %s\n", what, ok ? "ok" : "FAILED");
}

static uint32_t checksum(const uint8_t *p, size_t n)          /* FNV-1a */
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static void fill(uint8_t *buf, size_t n, uint64_t sector, uint32_t seed)
{
    uint64_t *w = (uint64_t *)buf;
    for (size_t i = 0; i < n / 8; i++)
        w[i] = (sector << 32) ^ (seed * 0x9E3779B97F4A7C15ULL) ^ (i * 0x100000001B3ULL);
}

static void setup(struct blkfront_aiocb *a, struct blkfront_dev *dev, void *buf, size_t n, uint64_t sector)
{
    memset(a, 0, sizeof(*a));
    a->aio_dev = dev;
    a->aio_buf = buf;
    a->aio_nbytes = n;
    a->aio_offset = sector * 512;
}

static int first_vbd(char *node, size_t size)
{
    char **dirs, *msg = xenbus_ls(XBT_NIL, "device/vbd", &dirs);
    if (msg) {
        free(msg);
        return 0;
    }
    int found = dirs[0] != NULL;
    if (found)
        snprintf(node, size, "device/vbd/%s", dirs[0]);
    for (int i = 0; dirs[i]; i++)
        free(dirs[i]);
    free(dirs);
    return found;
}

#define NR_WRITES 16
static void blk_test(void *p)
{
    struct blkfront_info info;
    struct blkfront_aiocb a[NR_WRITES], big;
    char node[64];
    uint8_t *buf = (uint8_t *)alloc_pages(5);             /* 128 KiB: 16 pages + an 11-page buffer */
    uint8_t *bigbuf = buf + 16 * PAGE_SIZE;
    struct blkfront_dev *dev;

    if (!first_vbd(node, sizeof(node))) {
        blk_test_finished();            /* no disk: nothing to test (Mini-OS's init_blkfront fails quietly) */
        free_pages(buf, 5);
        return;
    }
    if (!(dev = init_blkfront(node, &info))) {
        printk("blk: cannot connect to %s\n", node);
        check("connect", 0);
        blk_test_finished();
        free_pages(buf, 5);
        return;
    }
    printk("blk: %s: %lu sectors of %u bytes, %s%s%s%s\n", node, (unsigned long)info.sectors, info.sector_size,
           info.mode == BLK_RDWR ? "read-write" : "read-only", info.info & VDISK_CDROM ? ", cdrom" : "",
           info.info & VDISK_REMOVABLE ? ", removable" : "", info.info & VDISK_READONLY ? ", VDISK_READONLY" : "");
    printk("blk: features: flush-cache %d, barrier %d, discard %d\n", info.flush, info.barrier, info.discard);

    /* the first and the last sector, both in flight */
    setup(&a[0], dev, buf, 512, 0);
    setup(&a[1], dev, buf + PAGE_SIZE, 512, info.sectors - 1);
    blkfront_aio_read(&a[0]);
    blkfront_aio_read(&a[1]);
    blkfront_wait(&a[0]);
    blkfront_wait(&a[1]);
    check("read first and last sector", a[0].status == 0 && a[1].status == 0);
    printk("blk: sector 0 checksum %08x, sector %lu checksum %08x\n", checksum(buf, 512),
           (unsigned long)info.sectors - 1, checksum(buf + PAGE_SIZE, 512));
    uint32_t sector0 = checksum(buf, 512);

    if (info.mode == BLK_RDWR && info.sectors >= 64) {
        uint64_t room = info.sectors - 8 - 16, sectors[NR_WRITES];
        int ok = 1;
        for (int i = 0; i < NR_WRITES; i++) {
            sectors[i] = 16 + (rnd() % (room / 8)) * 8;     /* (a repeat writes the same data) */
            fill(buf + i * PAGE_SIZE, PAGE_SIZE, sectors[i], 1);
            setup(&a[i], dev, buf + i * PAGE_SIZE, PAGE_SIZE, sectors[i]);
            blkfront_aio_write(&a[i]);
        }
        for (int i = 0; i < NR_WRITES; i++) {
            blkfront_wait(&a[i]);
            ok = ok && a[i].status == 0;
        }
        check("16 page writes in flight", ok);
        check("flush", blkfront_sync(dev) == 0);
        memset(buf, 0, NR_WRITES * PAGE_SIZE);
        for (int i = 0; i < NR_WRITES; i++) {
            setup(&a[i], dev, buf + i * PAGE_SIZE, PAGE_SIZE, sectors[i]);
            blkfront_aio_read(&a[i]);
        }
        uint8_t *expect = bigbuf;
        for (int i = 0; i < NR_WRITES; i++) {
            blkfront_wait(&a[i]);
            fill(expect, PAGE_SIZE, sectors[i], 1);
            ok = ok && a[i].status == 0 && !memcmp(buf + i * PAGE_SIZE, expect, PAGE_SIZE);
        }
        check("16 pages read back in flight", ok);

        /* one request of 11 segments, the most a direct request carries */
        uint64_t at = info.sectors >= 200 ? 100 : 24;
        if (at + 88 <= info.sectors) {
            fill(bigbuf, 11 * PAGE_SIZE, at, 2);
            setup(&big, dev, bigbuf, 11 * PAGE_SIZE, at);
            int wst = blkfront_io(&big, 1);
            memset(bigbuf, 0, 11 * PAGE_SIZE);
            int rst = blkfront_io(&big, 0);
            fill(buf, 11 * PAGE_SIZE, at, 2);
            check("11-segment write and read back", !wst && !rst && !memcmp(buf, bigbuf, 11 * PAGE_SIZE));
        }
        memset(buf, 0, 512);
        memcpy(buf, MARKER, sizeof(MARKER) - 1);
        setup(&a[0], dev, buf, 512, 2);
        check("marker written to sector 2", blkfront_io(&a[0], 1) == 0 && blkfront_sync(dev) == 0);
    }

    /* the backend must refuse what lies past the end of the disk */
    setup(&a[0], dev, buf, 512, info.sectors);
    int past = blkfront_io(&a[0], 0);
    printk("blk: read of sector %lu (past the end): status %d\n", (unsigned long)info.sectors, past);
    check("read past the end refused", past == -1);

    /* disconnect as Mini-OS does, connect again, and read through the new connection */
    shutdown_blkfront(dev);
    dev = init_blkfront(node, &info);
    if (!dev) {
        check("reconnect", 0);
    } else {
        memset(buf, 0, 512);
        int ok;
        if (info.mode == BLK_RDWR && info.sectors >= 64) {
            setup(&a[0], dev, buf, 512, 2);
            ok = blkfront_io(&a[0], 0) == 0 && !memcmp(buf, MARKER, sizeof(MARKER) - 1);
        } else {
            setup(&a[0], dev, buf, 512, 0);
            ok = blkfront_io(&a[0], 0) == 0 && checksum(buf, 512) == sector0;
        }
        check("reconnect and read back", ok);
        shutdown_blkfront(dev);
    }
    printk("blk test %s: %d/%d checks ok\n", failed ? "FAILED" : "passed", passed, passed + failed);
    free(xenbus_write(XBT_NIL, "data/blk-test", failed ? "failed" : "passed"));
    free_pages(buf, 5);
    blk_test_finished();
}

/* -- blkbench ---------------------------------------------------------------------------------------- */
#define BENCH_DEPTH 32
static void blk_bench(void *p)
{
    char mode[16], node[64];
    const char *arg = (const char *)p;
    unsigned long amount = 0;
    struct blkfront_info info;
    struct blkfront_dev *dev = NULL;
    static struct blkfront_aiocb a[BENCH_DEPTH];
    int i = 0;

    while (arg[i] && arg[i] != ',' && i < (int)sizeof(mode) - 1) {
        mode[i] = arg[i];
        i++;
    }
    mode[i] = 0;
    if (arg[i] == ',')
        amount = strtoul(arg + i + 1, NULL, 10);
    if (!first_vbd(node, sizeof(node)) || !(dev = init_blkfront(node, &info))) {
        printk("blkbench: no block device\n");
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    }
    int seq = !strcmp(mode, "seqread") || !strcmp(mode, "seqwrite");
    int write = !strcmp(mode, "seqwrite") || !strcmp(mode, "randwrite");
    size_t size = seq ? 11 * PAGE_SIZE : PAGE_SIZE;
    unsigned long count = seq ? (amount << 20) / size : amount;
    uint8_t *bufs = (uint8_t *)alloc_pages(9);          /* 2 MiB: 32 x 44 KiB + slack */
    uint64_t span = info.sectors - size / 512, next = 0;
    s_time_t t0 = NOW();
    unsigned long issued = 0, completed = 0, errors = 0;

    if (!strcmp(mode, "none"))
        count = 0;
    fill(bufs, 2 << 20, 7, 3);
    while (completed < count) {
        while (issued < count && issued - completed < BENCH_DEPTH) {
            struct blkfront_aiocb *x = &a[issued % BENCH_DEPTH];
            uint64_t sector;
            if (seq) {
                if (next > span)
                    next = 0;
                sector = next;
                next += size / 512;
            } else {
                sector = (rnd() % (span / 8 + 1)) * 8;
            }
            setup(x, dev, bufs + (issued % BENCH_DEPTH) * 11 * PAGE_SIZE, size, sector);
            blkfront_aio(x, write);
            issued++;
        }
        struct blkfront_aiocb *oldest = &a[completed % BENCH_DEPTH];
        blkfront_wait(oldest);
        if (oldest->status)
            errors++;
        completed++;
    }
    if (write)
        blkfront_sync(dev);
    printk("blkbench: %s %lu requests of %lu bytes, %lu errors, in %lu us of guest time\n", mode, count,
           (unsigned long)size, errors, (unsigned long)((NOW() - t0) / 1000));
    HYPERVISOR_shutdown(errors ? SHUTDOWN_crash : SHUTDOWN_poweroff);
}

/* Called from app_main (not a thread: no xenbus here): starts the block test thread, which looks for a disk,
   or the benchmark. Returns 1 for the benchmark (nothing else should run). */
int start_blk_test(void)
{
    static char bench[64];
    const char *arg = cmdline_value("blkbench");
    if (arg) {
        snprintf(bench, sizeof(bench), "%s", arg);
        create_thread("blkbench", blk_bench, bench);
        return 1;
    }
    blk_test_running = 1;
    create_thread("blkfront", blk_test, NULL);
    return 0;
}
