/*
 * The xenstore client, as Mini-OS's xenbus/xenbus.c, over the ring page and event channel start_info
 * names.
 *
 * Requests carry an id from 0..31 (NR_REQS) that the daemon echoes in its reply; a thread per request
 * writes its message into the request ring (in chunks if the ring is full) and sleeps on its id's wait
 * queue. One "xenstore" thread reads the response ring: replies go to the waiting request, watch events
 * to the queue of the watch whose token they carry. Paths are relative to /local/domain/<domid>.
 * Errors come back as malloc()ed errno names ("ENOENT"); NULL means success, as in Mini-OS.
 */
#include "minios.h"

#define XS_DIRECTORY          1
#define XS_READ               2
#define XS_WATCH              4
#define XS_UNWATCH            5
#define XS_TRANSACTION_START  6
#define XS_TRANSACTION_END    7
#define XS_WRITE             11
#define XS_RM                13
#define XS_WATCH_EVENT       15
#define XS_ERROR             16
#define XENSTORE_RING_SIZE 1024U
#define XENSTORE_PAYLOAD_MAX 4096
#define MASK_XENSTORE_IDX(idx) ((idx) & (XENSTORE_RING_SIZE - 1))
#define NR_REQS 32

struct write_req { const void *data; unsigned int len; };

static struct xenstore_domain_interface *xenstore_buf;
static uint32_t xenbus_evtchn;
static DECLARE_WAIT_QUEUE_HEAD(xb_waitq);              /* ring activity */
static DECLARE_WAIT_QUEUE_HEAD(xenbus_watch_queue);    /* a watch event was queued */
static DECLARE_WAIT_QUEUE_HEAD(req_wq);                /* a request id was freed */
static DECLARE_WAIT_QUEUE_HEAD(xb_write_wq);           /* the request ring writer is free */
static int xb_write_busy;
xenbus_event_queue xenbus_events;                      /* for watches registered without a queue */

static struct watch {
    char *token;
    char *path;
    xenbus_event_queue *events;
    struct watch *next;
} *watches;

static struct xenbus_req_info {
    int in_use;
    struct wait_queue_head waitq;
    struct xsd_sockmsg *reply;
} req_info[NR_REQS];
static int nr_live_reqs;

void get_xenbus(struct start_info *si)
{
    xenbus_evtchn = si->store_evtchn;
    xenstore_buf = mfn_to_virt(si->store_mfn);
}

static void memcpy_from_ring(const char *ring, char *dest, unsigned int off, unsigned int len)
{
    unsigned int c1 = len < XENSTORE_RING_SIZE - off ? len : XENSTORE_RING_SIZE - off;
    memcpy(dest, ring + off, c1);
    memcpy(dest + c1, ring, len - c1);
}

/* Read exactly len bytes of the response stream, sleeping until the daemon has put them there. */
static void xenbus_read_data(char *buf, unsigned int len)
{
    unsigned int off = 0, prod, cons, size;
    while (off != len) {
        wait_event(xb_waitq, xenstore_buf->rsp_prod != xenstore_buf->rsp_cons);
        prod = xenstore_buf->rsp_prod;
        cons = xenstore_buf->rsp_cons;
        size = len - off < prod - cons ? len - off : prod - cons;
        rmb();                  /* data after the index */
        memcpy_from_ring(xenstore_buf->rsp, buf + off, MASK_XENSTORE_IDX(cons), size);
        off += size;
        mb();                   /* data copied before the space is given back */
        xenstore_buf->rsp_cons += size;
        mb();
        if (xenstore_buf->rsp_prod - cons >= XENSTORE_RING_SIZE)
            notify_remote_via_evtchn(xenbus_evtchn);    /* it was full: the daemon may be waiting */
    }
}

/* The "xenstore" thread: demultiplex replies (by request id) and watch events (by token). */
static void xenbus_thread_func(void *ign)
{
    struct xsd_sockmsg msg;
    for (;;) {
        xenbus_read_data((char *)&msg, sizeof(msg));
        if (msg.len > XENSTORE_PAYLOAD_MAX) {
            printk("Xenstore violates protocol, message longer than allowed.\n");
            return;
        }
        if (msg.type == XS_WATCH_EVENT) {
            struct xenbus_event *event = malloc(sizeof(*event) + msg.len + 1);
            char *data = (char *)(event + 1);
            struct watch *watch;
            int zeroes = 0;

            xenbus_read_data(data, msg.len);
            data[msg.len] = 0;
            for (unsigned int i = 0; i < msg.len; i++)
                zeroes += !data[i];
            if (zeroes != 2) {
                printk("Xenstore: illegal watch event data\n");
                free(event);
                continue;
            }
            event->path = data;
            event->token = data + strlen(data) + 1;
            event->next = NULL;
            for (watch = watches; watch; watch = watch->next)
                if (!strcmp(watch->token, event->token))
                    break;
            if (!watch) {
                printk("Xenstore: unexpected watch token %s\n", event->token);
                free(event);
                continue;
            }
            /* Append: events are handled in the order the daemon sent them. */
            xenbus_event_queue *q = watch->events;
            while (*q)
                q = &(*q)->next;
            *q = event;
            wake_up(&xenbus_watch_queue);
            continue;
        }
        struct xsd_sockmsg *reply = malloc(sizeof(msg) + msg.len + 1);
        memcpy(reply, &msg, sizeof(msg));
        xenbus_read_data((char *)(reply + 1), msg.len);
        ((char *)(reply + 1))[msg.len] = 0;
        if (msg.req_id >= NR_REQS || !req_info[msg.req_id].in_use) {
            printk("Xenstore: illegal request id %d\n", msg.req_id);
            free(reply);
            continue;
        }
        req_info[msg.req_id].reply = reply;
        wake_up(&req_info[msg.req_id].waitq);
    }
}

static void xenbus_evtchn_handler(evtchn_port_t port, struct pt_regs *regs, void *ign)
{
    wake_up(&xb_waitq);
}

/* A free request id, rotating through 0..NR_REQS-1; sleeps while all are in flight. */
static int allocate_xenbus_id(void)
{
    static int probe;
    int id;
    wait_event(req_wq, nr_live_reqs < NR_REQS);
    id = probe;
    while (req_info[id].in_use)
        id = (id + 1) % NR_REQS;
    nr_live_reqs++;
    req_info[id].in_use = 1;
    req_info[id].reply = NULL;
    req_info[id].waitq.first = NULL;
    probe = (id + 1) % NR_REQS;
    return id;
}

static void release_xenbus_id(int id)
{
    BUG_ON(!req_info[id].in_use);
    req_info[id].in_use = 0;
    nr_live_reqs--;
    wake_up(&req_wq);
}

/* Put one message on the request ring; chunks go in as space frees up. Messages never interleave. */
static void xb_write(uint32_t type, uint32_t req_id, xenbus_transaction_t trans_id,
                     const struct write_req *req, int nr_reqs)
{
    struct xsd_sockmsg m = { .type = type, .req_id = req_id, .tx_id = trans_id };
    struct write_req header = { &m, sizeof(m) };
    const struct write_req *cur = &header;
    unsigned int len = 0, total_off = 0, req_off = 0;
    uint32_t prod;

    for (int r = 0; r < nr_reqs; r++)
        len += req[r].len;
    m.len = len;
    len += sizeof(m);
    BUG_ON(m.len > XENSTORE_PAYLOAD_MAX);

    wait_event(xb_write_wq, !xb_write_busy);
    xb_write_busy = 1;
    while (total_off < len) {
        prod = xenstore_buf->req_prod;
        if (prod - xenstore_buf->req_cons >= XENSTORE_RING_SIZE) {
            notify_remote_via_evtchn(xenbus_evtchn);
            wait_event(xb_waitq, prod - xenstore_buf->req_cons < XENSTORE_RING_SIZE);
        }
        unsigned int chunk = cur->len - req_off;
        if (chunk > XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(prod))
            chunk = XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(prod);
        if (chunk > xenstore_buf->req_cons + XENSTORE_RING_SIZE - prod)
            chunk = xenstore_buf->req_cons + XENSTORE_RING_SIZE - prod;
        memcpy(xenstore_buf->req + MASK_XENSTORE_IDX(prod), (const char *)cur->data + req_off, chunk);
        prod += chunk;
        req_off += chunk;
        total_off += chunk;
        if (req_off == cur->len) {
            req_off = 0;
            cur = cur == &header ? req : cur + 1;
        }
        wmb();                  /* the daemon must see the bytes before the index */
        xenstore_buf->req_prod = prod;
    }
    notify_remote_via_evtchn(xenbus_evtchn);
    xb_write_busy = 0;
    wake_up(&xb_write_wq);
}

/* Send a request and sleep until its reply (malloc()ed, NUL after the payload) arrives. */
static struct xsd_sockmsg *xenbus_msg_reply(uint32_t type, xenbus_transaction_t trans,
                                            const struct write_req *io, int nr_reqs)
{
    int id = allocate_xenbus_id();
    struct xsd_sockmsg *rep;

    xb_write(type, (uint32_t)id, trans, io, nr_reqs);
    wait_event(req_info[id].waitq, req_info[id].reply != NULL);
    rep = req_info[id].reply;
    BUG_ON(rep->req_id != (uint32_t)id);       /* the daemon must echo our id */
    release_xenbus_id(id);
    return rep;
}

/* NULL, or the error's name (malloc()ed) -- freeing the reply in that case. */
static char *errmsg(struct xsd_sockmsg *rep)
{
    if (!rep)
        return strdup("No reply");
    if (rep->type != XS_ERROR)
        return NULL;
    char *res = malloc(rep->len + 1);
    memcpy(res, rep + 1, rep->len);
    res[rep->len] = 0;
    free(rep);
    return res;
}

char *xenbus_ls(xenbus_transaction_t xbt, const char *pre, char ***contents)
{
    struct write_req req[] = { { pre, (unsigned int)strlen(pre) + 1 } };
    struct xsd_sockmsg *reply = xenbus_msg_reply(XS_DIRECTORY, xbt, req, 1);
    char *msg = errmsg(reply), **res, *p;
    int nr_elems = 0, i;

    if (msg)
        return msg;
    p = (char *)(reply + 1);
    for (unsigned int x = 0; x < reply->len; x++)
        nr_elems += !p[x];
    res = malloc((nr_elems + 1) * sizeof(char *));
    for (i = 0; i < nr_elems; i++) {
        res[i] = strdup(p);
        p += strlen(p) + 1;
    }
    res[i] = NULL;
    free(reply);
    *contents = res;
    return NULL;
}

char *xenbus_read(xenbus_transaction_t xbt, const char *path, char **value)
{
    struct write_req req[] = { { path, (unsigned int)strlen(path) + 1 } };
    struct xsd_sockmsg *rep = xenbus_msg_reply(XS_READ, xbt, req, 1);
    char *msg = errmsg(rep);
    if (msg) {
        *value = NULL;
        return msg;
    }
    *value = strdup((char *)(rep + 1));
    free(rep);
    return NULL;
}

char *xenbus_write(xenbus_transaction_t xbt, const char *path, const char *value)
{
    struct write_req req[] = { { path, (unsigned int)strlen(path) + 1 }, { value, (unsigned int)strlen(value) } };
    struct xsd_sockmsg *rep = xenbus_msg_reply(XS_WRITE, xbt, req, 2);
    char *msg = errmsg(rep);
    if (msg)
        return msg;
    free(rep);
    return NULL;
}

char *xenbus_rm(xenbus_transaction_t xbt, const char *path)
{
    struct write_req req[] = { { path, (unsigned int)strlen(path) + 1 } };
    struct xsd_sockmsg *rep = xenbus_msg_reply(XS_RM, xbt, req, 1);
    char *msg = errmsg(rep);
    if (msg)
        return msg;
    free(rep);
    return NULL;
}

char *xenbus_watch_path_token(xenbus_transaction_t xbt, const char *path, const char *token,
                              xenbus_event_queue *events)
{
    struct write_req req[] = { { path, (unsigned int)strlen(path) + 1 }, { token, (unsigned int)strlen(token) + 1 } };
    struct watch *watch = malloc(sizeof(*watch));

    /* Registered before the request: the daemon fires every new watch once, at once. */
    watch->token = strdup(token);
    watch->path = strdup(path);
    watch->events = events ? events : &xenbus_events;
    watch->next = watches;
    watches = watch;

    struct xsd_sockmsg *rep = xenbus_msg_reply(XS_WATCH, xbt, req, 2);
    char *msg = errmsg(rep);
    if (msg)
        return msg;
    free(rep);
    return NULL;
}

char *xenbus_unwatch_path_token(xenbus_transaction_t xbt, const char *path, const char *token)
{
    struct write_req req[] = { { path, (unsigned int)strlen(path) + 1 }, { token, (unsigned int)strlen(token) + 1 } };
    struct xsd_sockmsg *rep = xenbus_msg_reply(XS_UNWATCH, xbt, req, 2);
    char *msg = errmsg(rep);
    if (msg)
        return msg;
    free(rep);
    for (struct watch **w = &watches; *w; w = &(*w)->next)
        if (!strcmp((*w)->token, token)) {
            struct watch *gone = *w;
            *w = gone->next;
            free(gone->token);
            free(gone->path);
            free(gone);
            break;
        }
    return NULL;
}

/* The next event of a queue (path and token in one allocation: free the returned pointer's owner). */
char **xenbus_wait_for_watch_return(xenbus_event_queue *queue)
{
    struct xenbus_event *event;
    if (!queue)
        queue = &xenbus_events;
    wait_event(xenbus_watch_queue, *queue != NULL);
    event = *queue;
    *queue = event->next;
    return &event->path;                /* == (char **)event: free() it when done */
}

void xenbus_wait_for_watch(xenbus_event_queue *queue)
{
    free(xenbus_wait_for_watch_return(queue));
}

char *xenbus_transaction_start(xenbus_transaction_t *xbt)
{
    struct write_req req = { "", 1 };           /* the payload is an empty string */
    struct xsd_sockmsg *rep = xenbus_msg_reply(XS_TRANSACTION_START, XBT_NIL, &req, 1);
    char *msg = errmsg(rep);
    if (msg)
        return msg;
    *xbt = (xenbus_transaction_t)strtoul((char *)(rep + 1), NULL, 10);
    free(rep);
    return NULL;
}

/* Commit (abort = 0) or abort; a commit that conflicted reports EAGAIN as *retry = 1, no error. */
char *xenbus_transaction_end(xenbus_transaction_t t, int abort, int *retry)
{
    struct write_req req = { abort ? "F" : "T", 2 };
    struct xsd_sockmsg *rep = xenbus_msg_reply(XS_TRANSACTION_END, t, &req, 1);
    char *msg = errmsg(rep);

    *retry = 0;
    if (msg) {
        if (!strcmp(msg, "EAGAIN")) {
            *retry = 1;
            free(msg);
            return NULL;
        }
        return msg;
    }
    free(rep);
    return NULL;
}

char *xenbus_printf(xenbus_transaction_t xbt, const char *node, const char *path, const char *fmt, ...)
{
    char fullpath[256], val[256];
    va_list args;
    snprintf(fullpath, sizeof(fullpath), "%s/%s", node, path);
    va_start(args, fmt);
    vsnprintf(val, sizeof(val), fmt, args);
    va_end(args);
    return xenbus_write(xbt, fullpath, val);
}

/* Mini-OS's xenbus_read_integer generalised to a node and a path: the unsigned value, or -1 on error. */
int xenbus_scanf(xenbus_transaction_t xbt, const char *node, const char *path, unsigned long *value)
{
    char fullpath[256], *res, *msg, *end;
    snprintf(fullpath, sizeof(fullpath), "%s/%s", node, path);
    msg = xenbus_read(xbt, fullpath, &res);
    if (msg) {
        free(msg);
        return -1;
    }
    *value = strtoul(res, &end, 10);
    int ok = end != res && !*end;
    free(res);
    return ok ? 1 : -1;
}

domid_t xenbus_get_self_id(void)
{
    char *dom_id, *msg = xenbus_read(XBT_NIL, "domid", &dom_id);
    if (msg) {
        printk("Cannot read our domid: %s\n", msg);
        free(msg);
        return DOMID_SELF;
    }
    domid_t ret = (domid_t)strtoul(dom_id, NULL, 10);
    free(dom_id);
    return ret;
}

void init_xenbus(void)
{
    create_thread("xenstore", xenbus_thread_func, NULL);
    bind_evtchn(xenbus_evtchn, xenbus_evtchn_handler, NULL);
    unmask_evtchn(xenbus_evtchn);
    printk("xenbus initialised on irq %d mfn 0x%lx\n", xenbus_evtchn, virt_to_mfn(xenstore_buf));
}
