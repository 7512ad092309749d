/*
 * netfront, as Mini-OS's netfront.c does it (written for this tree): a tx and an rx ring of one page each,
 * granted to the backend, one event channel, rx-copy (the backend copies frames into pages we grant it),
 * and the xenbus handshake: ring references, event channel and features written in one transaction with
 * our state Connected, then we wait for the backend to be Connected too.
 *
 * Unlike 2016 Mini-OS it also does scatter-gather both ways: a frame is sent as one request per page it
 * touches (NETTXF_more_data), and received frames spanning several slots (NETRXF_more_data) are put back
 * together before the application sees them. Every tx slot has its own page, granted read-only for as
 * long as the request is outstanding; a response frees it.
 */
#include "netfront.h"

struct net_buffer { unsigned char *page; grant_ref_t gref; };

struct netfront_dev {
    domid_t dom;
    char nodename[64];
    char backend[128];
    unsigned char mac[6];
    int sg;

    struct netif_tx_sring *txs;
    struct netif_rx_sring *rxs;
    RING_IDX tx_prod_pvt, tx_rsp_cons, rx_prod_pvt, rx_rsp_cons;
    grant_ref_t tx_ring_ref, rx_ring_ref;
    evtchn_port_t evtchn;

    struct net_buffer tx_buffers[NET_TX_RING_SIZE];
    uint16_t tx_free[NET_TX_RING_SIZE];
    int nr_tx_free;
    struct wait_queue_head tx_wq;

    struct net_buffer rx_buffers[NET_RX_RING_SIZE];
    unsigned char *rx_frame;            /* a frame being put together from several slots */
    int rx_len;
    unsigned int rx_flags;
    int rx_bad;
    netif_rx_t rx;

    struct netfront_stats stats;
};

#define RX_FRAME_MAX (16 * PAGE_SIZE)

/* Frame data is copied eight bytes at a time with string instructions, not lib.c's byte loop: copying is
   most of what a frame costs the guest. */
static inline void copy_frame_bytes(void *dst, const void *src, size_t n)
{
    size_t words = n / 8, rest = n % 8;
    __asm__ volatile("rep movsq" : "+D"(dst), "+S"(src), "+c"(words) :: "memory");
    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(rest) :: "memory");
}

static evtchn_port_t evtchn_alloc_unbound_for(domid_t remote)
{
    struct evtchn_alloc_unbound op = { .dom = DOMID_SELF, .remote_dom = remote };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &op);
    if (rc) {
        printk("netfront: EVTCHNOP_alloc_unbound failed: %ld\n", rc);
        return 0;
    }
    return op.port;
}

/* RING_PUSH_REQUESTS_AND_CHECK_NOTIFY */
static int push_requests(struct sring_header *h, RING_IDX prod_pvt)
{
    RING_IDX old = h->req_prod, new = prod_pvt;
    wmb();                              /* requests before the index */
    h->req_prod = new;
    mb();                               /* the index before we look at req_event */
    return (RING_IDX)(new - h->req_event) < (RING_IDX)(new - old);
}

/* Responses to the frames we sent: their pages and ids go back to the free list. */
static void tx_buf_gc(struct netfront_dev *dev)
{
    RING_IDX cons, prod;
    do {
        prod = dev->txs->h.rsp_prod;
        rmb();
        for (cons = dev->tx_rsp_cons; cons != prod; cons++) {
            struct netif_tx_response *rsp = &dev->txs->ring[cons & (NET_TX_RING_SIZE - 1)].rsp;
            if (rsp->status == NETIF_RSP_NULL)
                continue;
            if (rsp->status != NETIF_RSP_OKAY)
                dev->stats.tx_errors++;
            uint16_t id = rsp->id;
            if (id >= NET_TX_RING_SIZE || dev->tx_buffers[id].gref == 0) {
                printk("netfront: tx response with a bad id %u\n", id);
                continue;
            }
            gnttab_end_access(dev->tx_buffers[id].gref);
            dev->tx_buffers[id].gref = 0;
            dev->tx_free[dev->nr_tx_free++] = id;
        }
        dev->tx_rsp_cons = prod;
        /* RING_FINAL_CHECK_FOR_RESPONSES: ask to be told of the next one, then look again. */
        dev->txs->h.rsp_event = prod + 1;
        mb();
    } while (prod != dev->txs->h.rsp_prod);
    wake_up(&dev->tx_wq);
}

static void post_rx(struct netfront_dev *dev, uint16_t id)
{
    struct net_buffer *buf = &dev->rx_buffers[id];
    struct netif_rx_request *req = &dev->rxs->ring[dev->rx_prod_pvt & (NET_RX_RING_SIZE - 1)].req;
    buf->gref = gnttab_grant_access(dev->dom, virt_to_mfn(buf->page), 0);
    req->id = id;
    req->gref = buf->gref;
    dev->rx_prod_pvt++;
}

/* Frames the backend copied in: hand them to the application, give the pages back to the backend. */
static void network_rx(struct netfront_dev *dev)
{
    RING_IDX cons, prod;
    int consumed = 0;
    do {
        prod = dev->rxs->h.rsp_prod;
        rmb();
        for (cons = dev->rx_rsp_cons; cons != prod; cons++, consumed++) {
            struct netif_rx_response rsp = dev->rxs->ring[cons & (NET_RX_RING_SIZE - 1)].rsp;
            dev->stats.rx_slots++;
            if (rsp.id >= NET_RX_RING_SIZE) {
                printk("netfront: rx response with a bad id %u\n", rsp.id);
                continue;
            }
            struct net_buffer *buf = &dev->rx_buffers[rsp.id];
            gnttab_end_access(buf->gref);
            buf->gref = 0;
            if (rsp.status < 0 || (unsigned long)rsp.offset + (unsigned long)rsp.status > PAGE_SIZE) {
                dev->stats.rx_errors++;
                dev->rx_bad = 1;
            } else if (!dev->rx_bad) {
                if (dev->rx_len == 0)
                    dev->rx_flags = rsp.flags;
                if ((unsigned long)dev->rx_len + (unsigned long)rsp.status > RX_FRAME_MAX) {
                    dev->rx_bad = 1;
                    dev->stats.rx_errors++;
                } else {
                    copy_frame_bytes(dev->rx_frame + dev->rx_len, buf->page + rsp.offset, rsp.status);
                    dev->rx_len += rsp.status;
                }
            }
            if (!(rsp.flags & NETRXF_more_data)) {
                if (!dev->rx_bad && dev->rx_len > 0) {
                    dev->stats.rx_frames++;
                    dev->stats.rx_bytes += dev->rx_len;
                    dev->rx(dev, dev->rx_frame, dev->rx_len, dev->rx_flags);
                }
                dev->rx_len = 0;
                dev->rx_bad = 0;
            }
            post_rx(dev, rsp.id);
        }
        dev->rx_rsp_cons = cons;
        dev->rxs->h.rsp_event = cons + 1;
        mb();
    } while (prod != dev->rxs->h.rsp_prod);
    if (consumed && push_requests(&dev->rxs->h, dev->rx_prod_pvt)) {
        dev->stats.notifies++;
        notify_remote_via_evtchn(dev->evtchn);
    }
}

static void netfront_handler(evtchn_port_t port, struct pt_regs *regs, void *data)
{
    struct netfront_dev *dev = data;
    unsigned long flags;
    local_irq_save(flags);
    tx_buf_gc(dev);
    network_rx(dev);
    local_irq_restore(flags);
}

int netfront_xmit_at(struct netfront_dev *dev, const unsigned char *data, int len, unsigned int flags,
                     unsigned int offset)
{
    unsigned long irq;
    if (len <= 0 || len > 0xFFFF || offset >= PAGE_SIZE)
        return -1;
    int first = len < (int)(PAGE_SIZE - offset) ? len : (int)(PAGE_SIZE - offset);
    int nslots = 1 + (len - first + PAGE_SIZE - 1) / PAGE_SIZE;
    if (nslots > 1 && !dev->sg && len > 1514)
        return -1;
    wait_event(dev->tx_wq, dev->nr_tx_free >= nslots);
    local_irq_save(irq);
    int pos = 0;
    for (int i = 0; i < nslots; i++) {
        uint16_t id = dev->tx_free[--dev->nr_tx_free];
        struct net_buffer *buf = &dev->tx_buffers[id];
        unsigned int off = i == 0 ? offset : 0;
        int n = i == 0 ? first : (len - pos < (int)PAGE_SIZE ? len - pos : (int)PAGE_SIZE);
        if (!buf->page)
            buf->page = (unsigned char *)alloc_page();
        copy_frame_bytes(buf->page + off, data + pos, n);
        buf->gref = gnttab_grant_access(dev->dom, virt_to_mfn(buf->page), 1);
        struct netif_tx_request *req = &dev->txs->ring[dev->tx_prod_pvt & (NET_TX_RING_SIZE - 1)].req;
        req->gref = buf->gref;
        req->offset = off;
        req->id = id;
        req->flags = (i == 0 ? flags : 0) | (i < nslots - 1 ? NETTXF_more_data : 0);
        req->size = i == 0 ? len : n;
        dev->tx_prod_pvt++;
        pos += n;
    }
    dev->stats.tx_frames++;
    dev->stats.tx_slots += nslots;
    if (push_requests(&dev->txs->h, dev->tx_prod_pvt)) {
        dev->stats.notifies++;
        notify_remote_via_evtchn(dev->evtchn);
    }
    tx_buf_gc(dev);
    local_irq_restore(irq);
    return 0;
}

void netfront_flush(struct netfront_dev *dev)
{
    wait_event(dev->tx_wq, dev->nr_tx_free == NET_TX_RING_SIZE);
}

struct netfront_stats *netfront_stats(struct netfront_dev *dev) { return &dev->stats; }
const char *netfront_backend(struct netfront_dev *dev) { return dev->backend; }
int netfront_sg(struct netfront_dev *dev) { return dev->sg; }

static int parse_mac(const char *s, unsigned char mac[6])
{
    for (int i = 0; i < 6; i++) {
        char *end;
        unsigned long b = strtoul(s, &end, 16);
        if (end == s || b > 255 || *end != (i == 5 ? '\0' : ':'))
            return -1;
        mac[i] = (unsigned char)b;
        s = end + 1;
    }
    return 0;
}

/* Read `key` of `dir` as a number (default if missing). */
static unsigned long read_ulong(const char *dir, const char *key, unsigned long dflt)
{
    unsigned long v;
    return xenbus_scanf(XBT_NIL, dir, key, &v) == 1 ? v : dflt;
}

/* Wait until the backend's state is `want` (1 on success; 0 if it went to Closing/Closed instead). */
static int wait_backend_state(struct netfront_dev *dev, unsigned long want, xenbus_event_queue *events)
{
    char path[160];
    snprintf(path, sizeof(path), "%s/state", dev->backend);
    for (;;) {
        unsigned long state = read_ulong(dev->backend, "state", 0);
        if (state == want)
            return 1;
        if (want == 4 && state >= 5) {
            char *err = NULL, epath[200];
            snprintf(epath, sizeof(epath), "/local/domain/0/error%s/error",
                     dev->backend + strlen("/local/domain/0"));
            char *msg = xenbus_read(XBT_NIL, epath, &err);
            printk("netfront: backend %s went to state %lu: %s\n", dev->backend, state, msg ? "?" : err);
            free(msg);
            free(err);
            return 0;
        }
        xenbus_wait_for_watch(events);
    }
}

struct netfront_dev *init_netfront(const char *nodename, netif_rx_t rx, unsigned char rawmac[6])
{
    struct netfront_dev *dev = malloc(sizeof(*dev));
    char *value = NULL, *err;
    xenbus_transaction_t xbt;
    int retry;

    memset(dev, 0, sizeof(*dev));
    snprintf(dev->nodename, sizeof(dev->nodename), "%s", nodename ? nodename : "device/vif/0");
    dev->rx = rx;
    printk("************************ NETFRONT for %s **********\n", dev->nodename);

    dev->dom = (domid_t)read_ulong(dev->nodename, "backend-id", 0);
    char path[96];
    snprintf(path, sizeof(path), "%s/backend", dev->nodename);
    if ((err = xenbus_read(XBT_NIL, path, &value))) {
        printk("netfront: no backend for %s: %s\n", dev->nodename, err);
        free(err);
        free(dev);
        return NULL;
    }
    snprintf(dev->backend, sizeof(dev->backend), "%s", value);
    free(value);
    snprintf(path, sizeof(path), "%s/mac", dev->nodename);
    if ((err = xenbus_read(XBT_NIL, path, &value)) || parse_mac(value, dev->mac)) {
        printk("netfront: %s has no usable mac\n", dev->nodename);
        free(err);
        free(value);
        free(dev);
        return NULL;
    }
    free(value);
    memcpy(rawmac, dev->mac, 6);

    /* Rings: zeroed, SHARED_RING_INIT, granted read-write to the backend. */
    dev->txs = (struct netif_tx_sring *)alloc_page();
    dev->rxs = (struct netif_rx_sring *)alloc_page();
    memset(dev->txs, 0, PAGE_SIZE);
    memset(dev->rxs, 0, PAGE_SIZE);
    dev->txs->h.req_event = dev->txs->h.rsp_event = 1;
    dev->rxs->h.req_event = dev->rxs->h.rsp_event = 1;
    dev->tx_ring_ref = gnttab_grant_access(dev->dom, virt_to_mfn(dev->txs), 0);
    dev->rx_ring_ref = gnttab_grant_access(dev->dom, virt_to_mfn(dev->rxs), 0);
    for (int i = 0; i < NET_TX_RING_SIZE; i++)
        dev->tx_free[dev->nr_tx_free++] = (uint16_t)(NET_TX_RING_SIZE - 1 - i);
    dev->rx_frame = (unsigned char *)alloc_pages(4);
    for (int i = 0; i < NET_RX_RING_SIZE; i++) {
        dev->rx_buffers[i].page = (unsigned char *)alloc_page();
        post_rx(dev, (uint16_t)i);
    }
    push_requests(&dev->rxs->h, dev->rx_prod_pvt);

    dev->evtchn = evtchn_alloc_unbound_for(dev->dom);
    if (!dev->evtchn)
        return NULL;
    bind_evtchn(dev->evtchn, netfront_handler, dev);

    xenbus_event_queue events = NULL;
    char wpath[160];
    snprintf(wpath, sizeof(wpath), "%s/state", dev->backend);
    free(xenbus_watch_path_token(XBT_NIL, wpath, wpath, &events));
    dev->sg = (int)read_ulong(dev->backend, "feature-sg", 0);

    do {
        const char *message = NULL;
        if ((err = xenbus_transaction_start(&xbt))) {
            printk("netfront: starting transaction: %s\n", err);
            free(err);
            return NULL;
        }
#define WRITE(key, fmt, v) if (!message && (err = xenbus_printf(xbt, dev->nodename, key, fmt, v))) \
                               { message = "writing " key; free(err); }
        WRITE("tx-ring-ref", "%u", dev->tx_ring_ref);
        WRITE("rx-ring-ref", "%u", dev->rx_ring_ref);
        WRITE("event-channel", "%u", dev->evtchn);
        WRITE("request-rx-copy", "%u", 1);
        WRITE("feature-rx-notify", "%u", 1);
        WRITE("feature-sg", "%u", dev->sg);
        WRITE("state", "%u", 4);                    /* XenbusStateConnected */
#undef WRITE
        err = xenbus_transaction_end(xbt, message != NULL, &retry);
        free(err);
        if (message) {
            printk("netfront: %s failed\n", message);
            return NULL;
        }
    } while (retry);

    unmask_evtchn(dev->evtchn);
    if (!wait_backend_state(dev, 4, &events)) {
        free(xenbus_unwatch_path_token(XBT_NIL, wpath, wpath));
        return NULL;
    }
    free(xenbus_unwatch_path_token(XBT_NIL, wpath, wpath));
    printk("netfront: backend at %s connected\n", dev->backend);
    printk("netfront: mac is %02x:%02x:%02x:%02x:%02x:%02x, scatter-gather %s\n", dev->mac[0], dev->mac[1],
           dev->mac[2], dev->mac[3], dev->mac[4], dev->mac[5], dev->sg ? "on" : "off");
    return dev;
}

/* Close as Mini-OS does: Closing, wait for the backend to follow, Closed; then let go of everything. */
void shutdown_netfront(struct netfront_dev *dev)
{
    xenbus_event_queue events = NULL;
    char wpath[160];

    netfront_flush(dev);
    snprintf(wpath, sizeof(wpath), "%s/state", dev->backend);
    free(xenbus_watch_path_token(XBT_NIL, wpath, wpath, &events));
    free(xenbus_printf(XBT_NIL, dev->nodename, "state", "%u", 5));
    while (read_ulong(dev->backend, "state", 6) < 5)
        xenbus_wait_for_watch(&events);
    free(xenbus_printf(XBT_NIL, dev->nodename, "state", "%u", 6));
    while (read_ulong(dev->backend, "state", 6) < 6)
        xenbus_wait_for_watch(&events);
    free(xenbus_unwatch_path_token(XBT_NIL, wpath, wpath));
    mask_evtchn(dev->evtchn);
    struct evtchn_close close = { .port = dev->evtchn };
    HYPERVISOR_event_channel_op(EVTCHNOP_close, &close);
    for (int i = 0; i < NET_RX_RING_SIZE; i++)
        if (dev->rx_buffers[i].gref)
            gnttab_end_access(dev->rx_buffers[i].gref);
    gnttab_end_access(dev->tx_ring_ref);
    gnttab_end_access(dev->rx_ring_ref);
    printk("netfront: %s closed\n", dev->nodename);
}
