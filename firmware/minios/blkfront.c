/*
 * The block frontend, as Mini-OS's blkfront.c: one ring page shared with the backend, an unbound event
 * channel for it, the xenbus handshake (ring-ref, event-channel, protocol and state in one transaction, then
 * wait for the backend to be Connected and read sectors/sector-size/info/mode/feature-*), asynchronous
 * requests (one segment per page of the buffer, granted to the backend read-only for writes), polling of
 * responses, flush, and the shutdown dance Mini-OS does (Closing, Closed, back to Initialising) so the
 * device can be set up again.
 */
#include "minios.h"
#include "blkfront.h"

#define BLKIF_OP_READ 0
#define BLKIF_OP_WRITE 1
#define BLKIF_OP_WRITE_BARRIER 2
#define BLKIF_OP_FLUSH_DISKCACHE 3

struct blkif_request_segment { uint32_t gref; uint8_t first_sect, last_sect; uint16_t pad; };
struct blkif_request {
    uint8_t operation, nr_segments;
    uint16_t handle;
    uint32_t pad;
    uint64_t id, sector_number;
    struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
};
struct blkif_response { uint64_t id; uint8_t operation; uint8_t pad; int16_t status; uint32_t pad2; };
union blkif_sring_entry { struct blkif_request req; struct blkif_response rsp; };
struct blkif_sring {
    volatile uint32_t req_prod, req_event, rsp_prod, rsp_event;
    uint8_t pad[48];
    union blkif_sring_entry ring[];
};

/* __RING_SIZE for one page: the largest power of two of entries after the 64-byte header */
#define RING_ENTRIES ((PAGE_SIZE - 64) / sizeof(union blkif_sring_entry))
static unsigned int ring_size(void)
{
    unsigned int n = 1;
    while (n * 2 <= RING_ENTRIES)
        n *= 2;
    return n;
}

struct blkfront_dev {
    domid_t dom;
    struct blkif_sring *sring;
    uint32_t req_prod_pvt, rsp_cons;
    unsigned int nr_ents;
    uint32_t ring_ref;
    evtchn_port_t evtchn;
    uint16_t handle;
    char nodename[64];
    char backend[96];
    struct blkfront_info info;
    xenbus_event_queue events;
};

uint32_t gnttab_grant_access(domid_t domid, unsigned long frame, int readonly);
int gnttab_end_access(uint32_t ref);
static DECLARE_WAIT_QUEUE_HEAD(blkfront_queue);

static void blkfront_handler(evtchn_port_t port, struct pt_regs *regs, void *data)
{
    wake_up(&blkfront_queue);
}

/* EVTCHNOP_alloc_unbound: a port the backend's domain may bind to (Mini-OS's evtchn_alloc_unbound). */
static int evtchn_alloc_unbound(domid_t pal, evtchn_handler_t handler, void *data, evtchn_port_t *port)
{
    struct evtchn_alloc_unbound op = { .dom = DOMID_SELF, .remote_dom = pal };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &op);
    if (rc) {
        printk("ERROR: alloc_unbound failed with rc=%ld\n", rc);
        return (int)rc;
    }
    *port = bind_evtchn(op.port, handler, data);
    return 0;
}

static int read_int(const char *node, const char *key, unsigned long *value)
{
    return xenbus_scanf(XBT_NIL, node, key, value) == 1;
}

/* Wait until the backend's state differs from *state (Mini-OS's xenbus_wait_for_state_change). */
static void wait_for_state_change(struct blkfront_dev *dev, unsigned long *state)
{
    unsigned long now;
    for (;;) {
        if (read_int(dev->backend, "state", &now) && now != *state) {
            *state = now;
            return;
        }
        xenbus_wait_for_watch(&dev->events);
    }
}

static void free_blkfront(struct blkfront_dev *dev)
{
    unbind_evtchn(dev->evtchn);
    if (!gnttab_end_access(dev->ring_ref))
        printk("blkfront: the ring page is still mapped by the backend: leaking it\n");
    else
        free_pages(dev->sring, 0);
    free(dev);
}

struct blkfront_dev *init_blkfront(const char *nodename, struct blkfront_info *info)
{
    struct blkfront_dev *dev = malloc(sizeof(*dev));
    xenbus_transaction_t xbt;
    unsigned long value, state;
    char *msg, *c;
    int retry;

    memset(dev, 0, sizeof(*dev));
    snprintf(dev->nodename, sizeof(dev->nodename), "%s", nodename);
    printk("******************* BLKFRONT for %s **********\n", dev->nodename);
    if (!read_int(dev->nodename, "backend-id", &value)) {
        printk("blkfront: no backend-id\n");
        free(dev);
        return NULL;
    }
    dev->dom = (domid_t)value;
    if (evtchn_alloc_unbound(dev->dom, blkfront_handler, dev, &dev->evtchn)) {
        free(dev);
        return NULL;
    }
    dev->sring = (struct blkif_sring *)alloc_page();
    memset(dev->sring, 0, PAGE_SIZE);
    dev->sring->req_event = dev->sring->rsp_event = 1;       /* SHARED_RING_INIT */
    dev->nr_ents = ring_size();                               /* FRONT_RING_INIT */
    dev->ring_ref = gnttab_grant_access(dev->dom, virt_to_mfn(dev->sring), 0);
    {
        const char *slash = dev->nodename;
        for (const char *p = dev->nodename; *p; p++)
            if (*p == '/')
                slash = p + 1;
        dev->handle = (uint16_t)strtoul(slash, NULL, 10);
    }

    do {
        if ((msg = xenbus_transaction_start(&xbt))) {
            printk("blkfront: starting transaction: %s\n", msg);
            free(msg);
            goto error;
        }
        free(xenbus_printf(xbt, dev->nodename, "ring-ref", "%u", dev->ring_ref));
        free(xenbus_printf(xbt, dev->nodename, "event-channel", "%u", dev->evtchn));
        free(xenbus_printf(xbt, dev->nodename, "protocol", "%s", "x86_64-abi"));
        free(xenbus_printf(xbt, dev->nodename, "state", "%u", XenbusStateConnected));
        msg = xenbus_transaction_end(xbt, 0, &retry);
        if (msg) {
            printk("blkfront: completing transaction: %s\n", msg);
            free(msg);
            goto error;
        }
    } while (retry);

    {
        char path[128];
        snprintf(path, sizeof(path), "%s/backend", dev->nodename);
        if ((msg = xenbus_read(XBT_NIL, path, &c))) {
            printk("Error %s when reading the backend path %s\n", msg, path);
            free(msg);
            goto error;
        }
        snprintf(dev->backend, sizeof(dev->backend), "%s", c);
        free(c);
    }
    printk("backend at %s\n", dev->backend);
    {
        char path[128];
        snprintf(path, sizeof(path), "%s/mode", dev->backend);
        if ((msg = xenbus_read(XBT_NIL, path, &c))) {
            printk("Error %s when reading the mode\n", msg);
            free(msg);
            goto error;
        }
        dev->info.mode = *c == 'w' ? BLK_RDWR : BLK_RDONLY;
        free(c);
        snprintf(path, sizeof(path), "%s/state", dev->backend);
        free(xenbus_watch_path_token(XBT_NIL, path, path, &dev->events));
        state = 0;
        read_int(dev->backend, "state", &state);
        while (state < XenbusStateConnected)
            wait_for_state_change(dev, &state);
        if (state != XenbusStateConnected) {
            printk("backend not available, state=%lu\n", state);
            free(xenbus_unwatch_path_token(XBT_NIL, path, path));
            goto error;
        }
    }
    dev->info.info = read_int(dev->backend, "info", &value) ? (int)value : 0;
    dev->info.sectors = read_int(dev->backend, "sectors", &value) ? value : 0;
    dev->info.sector_size = read_int(dev->backend, "sector-size", &value) ? (unsigned int)value : 0;
    dev->info.barrier = read_int(dev->backend, "feature-barrier", &value) ? (int)value : 0;
    dev->info.flush = read_int(dev->backend, "feature-flush-cache", &value) ? (int)value : 0;
    dev->info.discard = read_int(dev->backend, "feature-discard", &value) ? (int)value : 0;
    *info = dev->info;
    unmask_evtchn(dev->evtchn);
    printk("%lu sectors of %u bytes\n", (unsigned long)dev->info.sectors, dev->info.sector_size);
    printk("**************************\n");
    return dev;

error:
    free_blkfront(dev);
    return NULL;
}

/* -- requests ------------------------------------------------------------------------------------------ */
static int ring_full(struct blkfront_dev *dev)
{
    return dev->req_prod_pvt - dev->rsp_cons >= dev->nr_ents;
}

/* RING_PUSH_REQUESTS_AND_CHECK_NOTIFY */
static void push_requests(struct blkfront_dev *dev)
{
    uint32_t old = dev->sring->req_prod, new = dev->req_prod_pvt;
    wmb();
    dev->sring->req_prod = new;
    mb();
    if ((uint32_t)(new - dev->sring->req_event) < (uint32_t)(new - old))
        notify_remote_via_evtchn(dev->evtchn);
}

static void wait_slot(struct blkfront_dev *dev)
{
    while (ring_full(dev)) {
        DEFINE_WAIT(w);
        blkfront_aio_poll(dev);
        if (!ring_full(dev))
            break;
        add_waiter(&w, &blkfront_queue);
        if (!ring_full(dev) || dev->sring->rsp_prod != dev->rsp_cons)
            remove_waiter(&w, &blkfront_queue);
        else {
            schedule();
            remove_waiter(&w, &blkfront_queue);
        }
    }
}

static void aio(struct blkfront_aiocb *aiocbp, int write)
{
    struct blkfront_dev *dev = aiocbp->aio_dev;
    unsigned long start = (unsigned long)aiocbp->aio_buf & PAGE_MASK;
    unsigned long end = ((unsigned long)aiocbp->aio_buf + aiocbp->aio_nbytes + PAGE_SIZE - 1) & PAGE_MASK;
    struct blkif_request *req;
    int n = (int)((end - start) / PAGE_SIZE);

    BUG_ON(aiocbp->aio_nbytes % dev->info.sector_size || aiocbp->aio_offset % dev->info.sector_size);
    BUG_ON(((unsigned long)aiocbp->aio_buf & 511) || n > BLKIF_MAX_SEGMENTS_PER_REQUEST);
    wait_slot(dev);
    req = &dev->sring->ring[dev->req_prod_pvt & (dev->nr_ents - 1)].req;
    req->operation = write ? BLKIF_OP_WRITE : BLKIF_OP_READ;
    req->nr_segments = (uint8_t)n;
    req->handle = dev->handle;
    req->id = (uintptr_t)aiocbp;
    req->sector_number = aiocbp->aio_offset / 512;
    aiocbp->n = n;
    for (int j = 0; j < n; j++) {
        unsigned long page = start + j * PAGE_SIZE;
        unsigned long from = page < (unsigned long)aiocbp->aio_buf ? (unsigned long)aiocbp->aio_buf : page;
        unsigned long to = page + PAGE_SIZE < (unsigned long)aiocbp->aio_buf + aiocbp->aio_nbytes
                         ? page + PAGE_SIZE : (unsigned long)aiocbp->aio_buf + aiocbp->aio_nbytes;
        req->seg[j].first_sect = (uint8_t)((from & ~PAGE_MASK) / 512);
        req->seg[j].last_sect = (uint8_t)(((to - 1) & ~PAGE_MASK) / 512);
        /* a write only lets the backend read our page */
        aiocbp->gref[j] = req->seg[j].gref = gnttab_grant_access(dev->dom, virt_to_mfn(page), write);
    }
    dev->req_prod_pvt++;
    push_requests(dev);
}

void blkfront_aio(struct blkfront_aiocb *aiocbp, int write) { aio(aiocbp, write); }

/* A request without data: flush (BLKIF_OP_FLUSH_DISKCACHE) or barrier; completion through aiocbp. */
static void push_operation(struct blkfront_dev *dev, uint8_t op, struct blkfront_aiocb *aiocbp)
{
    struct blkif_request *req;
    wait_slot(dev);
    req = &dev->sring->ring[dev->req_prod_pvt & (dev->nr_ents - 1)].req;
    req->operation = op;
    req->nr_segments = 0;
    req->handle = dev->handle;
    req->id = (uintptr_t)aiocbp;
    req->sector_number = 0;
    aiocbp->n = 0;
    dev->req_prod_pvt++;
    push_requests(dev);
}

/* Handle every response there is; returns how many. */
int blkfront_aio_poll(struct blkfront_dev *dev)
{
    int more, nr = 0;
    do {
        uint32_t rp = dev->sring->rsp_prod;
        rmb();
        while (dev->rsp_cons != rp) {
            struct blkif_response *rsp = &dev->sring->ring[dev->rsp_cons & (dev->nr_ents - 1)].rsp;
            struct blkfront_aiocb *aiocbp = (struct blkfront_aiocb *)(uintptr_t)rsp->id;
            int status = rsp->status;
            dev->rsp_cons++;
            nr++;
            for (int j = 0; j < aiocbp->n; j++)
                if (!gnttab_end_access(aiocbp->gref[j]))
                    printk("blkfront: grant %u still in use after its response\n", aiocbp->gref[j]);
            aiocbp->status = status;
            if (status != 0 && status != -2)
                printk("blkfront: request at offset %lu failed: status %d\n",
                       (unsigned long)aiocbp->aio_offset, status);
            aiocbp->done = 1;
            if (aiocbp->aio_cb)
                aiocbp->aio_cb(aiocbp, status);
        }
        /* RING_FINAL_CHECK_FOR_RESPONSES */
        more = dev->sring->rsp_prod != dev->rsp_cons;
        if (!more) {
            dev->sring->rsp_event = dev->rsp_cons + 1;
            mb();
            more = dev->sring->rsp_prod != dev->rsp_cons;
        }
    } while (more);
    return nr;
}

void blkfront_wait(struct blkfront_aiocb *aiocbp)
{
    struct blkfront_dev *dev = aiocbp->aio_dev;
    while (!aiocbp->done) {
        DEFINE_WAIT(w);
        blkfront_aio_poll(dev);
        if (aiocbp->done)
            break;
        add_waiter(&w, &blkfront_queue);
        if (dev->sring->rsp_prod == dev->rsp_cons)
            schedule();
        remove_waiter(&w, &blkfront_queue);
    }
}

int blkfront_io(struct blkfront_aiocb *aiocbp, int write)
{
    aiocbp->done = 0;
    aiocbp->aio_cb = NULL;
    aio(aiocbp, write);
    blkfront_wait(aiocbp);
    return aiocbp->status;
}

/* Wait for everything in flight, then flush the backend's cache (or a barrier if that is what it has). */
int blkfront_sync(struct blkfront_dev *dev)
{
    struct blkfront_aiocb a = { .aio_dev = dev };
    int status = 0;
    while (dev->req_prod_pvt != dev->rsp_cons) {
        DEFINE_WAIT(w);
        blkfront_aio_poll(dev);
        if (dev->req_prod_pvt == dev->rsp_cons)
            break;
        add_waiter(&w, &blkfront_queue);
        if (dev->sring->rsp_prod == dev->rsp_cons)
            schedule();
        remove_waiter(&w, &blkfront_queue);
    }
    if (dev->info.mode == BLK_RDWR && (dev->info.flush || dev->info.barrier)) {
        push_operation(dev, dev->info.flush ? BLKIF_OP_FLUSH_DISKCACHE : BLKIF_OP_WRITE_BARRIER, &a);
        blkfront_wait(&a);
        status = a.status;
    }
    return status;
}

/* Mini-OS's shutdown_blkfront: Closing, Closed, then Initialising again, following the backend. */
void shutdown_blkfront(struct blkfront_dev *dev)
{
    char path[128], node[128];
    unsigned long state;

    blkfront_sync(dev);
    printk("close blk: backend=%s node=%s\n", dev->backend, dev->nodename);
    snprintf(path, sizeof(path), "%s/state", dev->backend);
    free(xenbus_printf(XBT_NIL, dev->nodename, "state", "%u", XenbusStateClosing));
    state = 0;
    read_int(dev->backend, "state", &state);
    while (state < XenbusStateClosing)
        wait_for_state_change(dev, &state);
    free(xenbus_printf(XBT_NIL, dev->nodename, "state", "%u", XenbusStateClosed));
    while (state < XenbusStateClosed)
        wait_for_state_change(dev, &state);
    free(xenbus_printf(XBT_NIL, dev->nodename, "state", "%u", XenbusStateInitialising));
    while (state < XenbusStateInitWait || state >= XenbusStateClosed)
        wait_for_state_change(dev, &state);
    free(xenbus_unwatch_path_token(XBT_NIL, path, path));
    snprintf(node, sizeof(node), "%s/ring-ref", dev->nodename);
    free(xenbus_rm(XBT_NIL, node));
    snprintf(node, sizeof(node), "%s/event-channel", dev->nodename);
    free(xenbus_rm(XBT_NIL, node));
    free_blkfront(dev);
}
