/*
 * The network test application (`net=echo` or `net=bench` on the command line), in the spirit of
 * Mini-OS's netfront test: bring up device/vif/0, then talk to the gateway with frames built by hand.
 *
 *   net=echo    get an address (DHCP, or ip=A.B.C.D gw=A.B.C.D), ARP for the gateway, then UDP datagrams to
 *               the gateway's port (port=N, default 7777), each answered by an echo: a small one; a full
 *               1514-byte frame placed across a page boundary (two tx slots); one sent with its checksum
 *               left to the backend (NETTXF_csum_blank); with scatter-gather a 6000-byte one (several
 *               slots each way). Prints each result and "netfront test passed" (or FAILED), closes the
 *               device and powers off.
 *   net=bench   the same address and ARP, then count=N datagrams of size=S bytes to the gateway's port as
 *               fast as the ring allows; prints the guest time it took, then powers off.
 *   net=responder  be the gateway for another guest on the segment (`--net socket:`): ip=A.B.C.D, answer
 *               ARP for it and echo every UDP datagram sent to it, until one says "bye"; then power off.
 * net=echo ends by sending "bye" to the gateway's port.
 * With passt (`--net user`) the gateway is the host: its port is a UDP server on the host's 127.0.0.1.
 */
#include "netfront.h"

#define ETH_P_IP  0x0800
#define ETH_P_ARP 0x0806
#define RXQ 32
#define RXQ_FRAME 16384

static struct netfront_dev *dev;
static unsigned char my_mac[6], gw_mac[6];
static uint32_t my_ip, gw_ip, netmask;
static uint16_t echo_port = 7777;
static int passed, failed;

/* -- received frames: a small queue filled by the rx callback (event context) -------------------------- */
struct rx_slot { int len; unsigned int flags; unsigned char data[RXQ_FRAME]; };
static struct rx_slot *rxq;             /* RXQ slots, allocated when the test starts */
static volatile unsigned int rxq_prod, rxq_cons;
static unsigned long rxq_dropped;
static DECLARE_WAIT_QUEUE_HEAD(rx_wq);

static void net_rx(struct netfront_dev *d, const unsigned char *data, int len, unsigned int flags)
{
    if (rxq_prod - rxq_cons >= RXQ || len > RXQ_FRAME) {
        rxq_dropped++;
        return;
    }
    unsigned int slot = rxq_prod % RXQ;
    memcpy(rxq[slot].data, data, len);
    rxq[slot].len = len;
    rxq[slot].flags = flags;
    wmb();
    rxq_prod++;
    wake_up(&rx_wq);
}

static void check(const char *what, int ok)
{
    if (ok)
        passed++;
    else
        failed++;
    printk("net: %s %s\n", what, ok ? "ok" : "FAILED");
}

/* -- packet building --------------------------------------------------------------------------------- */
static uint32_t sum16(const unsigned char *p, int len, uint32_t s)
{
    for (int i = 0; i + 1 < len; i += 2)
        s += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1)
        s += (uint32_t)p[len - 1] << 8;
    return s;
}

static uint16_t fold(uint32_t s)
{
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint16_t)s;
}

static void put16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xFF; }
static void put32(unsigned char *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v & 0xFFFF); }
static uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const unsigned char *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }

static int eth_header(unsigned char *f, const unsigned char *dst, uint16_t type)
{
    memcpy(f, dst, 6);
    memcpy(f + 6, my_mac, 6);
    put16(f + 12, type);
    return 14;
}

/* An IPv4/UDP frame into f: returns its length. csum: 0 full checksum, 1 pseudo-header only (offload). */
static int udp_frame(unsigned char *f, const unsigned char *dst_mac, uint32_t src, uint32_t dst, uint16_t sport,
                     uint16_t dport, const unsigned char *payload, int plen, int csum_offload)
{
    static uint16_t ip_id = 1;
    int off = eth_header(f, dst_mac, ETH_P_IP);
    unsigned char *ip = f + off, *udp = ip + 20;
    memset(ip, 0, 20);
    ip[0] = 0x45;
    put16(ip + 2, (uint16_t)(20 + 8 + plen));
    put16(ip + 4, ip_id++);
    ip[6] = 0x40;                                   /* don't fragment */
    ip[8] = 64;
    ip[9] = 17;
    put32(ip + 12, src);
    put32(ip + 16, dst);
    put16(ip + 10, (uint16_t)~fold(sum16(ip, 20, 0)));
    put16(udp, sport);
    put16(udp + 2, dport);
    put16(udp + 4, (uint16_t)(8 + plen));
    put16(udp + 6, 0);
    memcpy(udp + 8, payload, plen);
    uint32_t pseudo = sum16(ip + 12, 8, 0) + 17 + 8 + plen;
    if (csum_offload) {
        put16(udp + 6, fold(pseudo));               /* what a NIC's checksum offload starts from */
    } else {
        uint16_t c = (uint16_t)~fold(sum16(udp, 8 + plen, pseudo));
        put16(udp + 6, c ? c : 0xFFFF);
    }
    return off + 20 + 8 + plen;
}

static int udp_checksum_ok(const unsigned char *ip, const unsigned char *udp, int ulen)
{
    if (get16(udp + 6) == 0)
        return 1;
    uint32_t pseudo = sum16(ip + 12, 8, 0) + 17 + ulen;
    return fold(sum16(udp, ulen, pseudo)) == 0xFFFF;
}

static void ip_str(char *buf, uint32_t ip)
{
    snprintf(buf, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

static uint32_t parse_ip(const char *s)
{
    uint32_t ip = 0;
    for (int i = 0; i < 4; i++) {
        char *end;
        unsigned long b = strtoul(s, &end, 10);
        if (end == s || b > 255)
            return 0;
        ip = ip << 8 | (uint32_t)b;
        s = end + (*end == '.');
    }
    return ip;
}

/* -- waiting for frames ------------------------------------------------------------------------------ */
/* Answer ARP requests for our address; anything else goes to the caller. */
static int handle_arp(const unsigned char *f, int len)
{
    if (len < 42 || get16(f + 12) != ETH_P_ARP || get16(f + 20) != 1 || !my_ip || get32(f + 38) != my_ip)
        return 0;
    unsigned char r[60];
    memset(r, 0, sizeof(r));
    int off = eth_header(r, f + 6, ETH_P_ARP);
    put16(r + off, 1);
    put16(r + off + 2, ETH_P_IP);
    r[off + 4] = 6;
    r[off + 5] = 4;
    put16(r + off + 6, 2);
    memcpy(r + off + 8, my_mac, 6);
    put32(r + off + 14, my_ip);
    memcpy(r + off + 18, f + 22, 10);               /* their mac and address */
    netfront_xmit(dev, r, 60);
    return 1;
}

typedef int (*frame_match_t)(const unsigned char *f, int len, void *arg);

/* Wait up to ms milliseconds for a frame `match` accepts; copies it to out. Its length, or 0. */
static int wait_frame(frame_match_t match, void *arg, unsigned char *out, int out_size, int ms)
{
    s_time_t deadline = NOW() + MILLISECS(ms);
    for (;;) {
        while (rxq_cons != rxq_prod) {
            unsigned int slot = rxq_cons % RXQ;
            int len = rxq[slot].len;
            int ok = !handle_arp(rxq[slot].data, len) && match(rxq[slot].data, len, arg);
            if (ok && out)
                memcpy(out, rxq[slot].data, len < out_size ? len : out_size);
            rxq_cons++;
            if (ok)
                return len;
        }
        if (NOW() >= deadline)
            return 0;
        msleep(5);
    }
}

/* -- ARP ----------------------------------------------------------------------------------------------- */
static int match_arp_reply(const unsigned char *f, int len, void *arg)
{
    return len >= 42 && get16(f + 12) == ETH_P_ARP && get16(f + 20) == 2 && get32(f + 28) == *(uint32_t *)arg;
}

static int arp_resolve(uint32_t ip, unsigned char mac[6])
{
    static const unsigned char bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    unsigned char f[60], reply[64];
    for (int attempt = 0; attempt < 5; attempt++) {
        memset(f, 0, sizeof(f));
        int off = eth_header(f, bcast, ETH_P_ARP);
        put16(f + off, 1);
        put16(f + off + 2, ETH_P_IP);
        f[off + 4] = 6;
        f[off + 5] = 4;
        put16(f + off + 6, 1);
        memcpy(f + off + 8, my_mac, 6);
        put32(f + off + 14, my_ip);
        put32(f + off + 24, ip);
        netfront_xmit(dev, f, 60);
        if (wait_frame(match_arp_reply, &ip, reply, sizeof(reply), 1000)) {
            memcpy(mac, reply + 22, 6);
            return 1;
        }
    }
    return 0;
}

/* -- DHCP (RFC 2131: DISCOVER, OFFER, REQUEST, ACK) -------------------------------------------------- */
struct dhcp_reply { uint32_t xid; uint8_t type; uint32_t yiaddr, server, router, mask, dns; };

static int match_dhcp(const unsigned char *f, int len, void *arg)
{
    struct dhcp_reply *r = arg;
    if (len < 14 + 20 + 8 + 240 || get16(f + 12) != ETH_P_IP || f[23] != 17)
        return 0;
    const unsigned char *ip = f + 14, *udp = ip + (ip[0] & 15) * 4, *b = udp + 8;
    if (get16(udp + 2) != 68 || b[0] != 2 || get32(b + 4) != r->xid || get32(b + 236) != 0x63825363)
        return 0;
    r->yiaddr = get32(b + 16);
    r->type = 0;
    const unsigned char *o = b + 240, *end = f + len;
    while (o < end && *o != 255) {
        if (*o == 0) { o++; continue; }
        if (o + 2 > end || o + 2 + o[1] > end)
            break;
        uint8_t code = o[0], n = o[1];
        const unsigned char *v = o + 2;
        if (code == 53 && n >= 1) r->type = v[0];
        if (code == 54 && n >= 4) r->server = get32(v);
        if (code == 3 && n >= 4) r->router = get32(v);
        if (code == 1 && n >= 4) r->mask = get32(v);
        if (code == 6 && n >= 4) r->dns = get32(v);
        o += 2 + n;
    }
    return r->type != 0;
}

static int dhcp_send(uint32_t xid, uint8_t type, uint32_t requested, uint32_t server)
{
    static const unsigned char bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    unsigned char b[300], f[400];
    memset(b, 0, sizeof(b));
    b[0] = 1; b[1] = 1; b[2] = 6;
    put32(b + 4, xid);
    put16(b + 10, 0x8000);                          /* broadcast replies: we have no address yet */
    memcpy(b + 28, my_mac, 6);
    put32(b + 236, 0x63825363);
    int o = 240;
    b[o++] = 53; b[o++] = 1; b[o++] = type;
    if (requested) { b[o++] = 50; b[o++] = 4; put32(b + o, requested); o += 4; }
    if (server) { b[o++] = 54; b[o++] = 4; put32(b + o, server); o += 4; }
    b[o++] = 55; b[o++] = 3; b[o++] = 1; b[o++] = 3; b[o++] = 6;
    b[o++] = 255;
    int len = udp_frame(f, bcast, 0, 0xFFFFFFFF, 68, 67, b, o < 300 ? 300 : o, 0);
    return netfront_xmit(dev, f, len);
}

static int dhcp(void)
{
    struct dhcp_reply r;
    for (int attempt = 0; attempt < 4; attempt++) {
        memset(&r, 0, sizeof(r));
        r.xid = 0x6d670000 + (uint32_t)attempt;     /* "mg" */
        dhcp_send(r.xid, 1, 0, 0);
        if (!wait_frame(match_dhcp, &r, NULL, 0, 2000) || r.type != 2)
            continue;
        uint32_t offered = r.yiaddr, server = r.server;
        dhcp_send(r.xid, 3, offered, server);
        if (!wait_frame(match_dhcp, &r, NULL, 0, 2000) || r.type != 5)
            continue;
        my_ip = r.yiaddr;
        gw_ip = r.router;
        netmask = r.mask;
        char a[16], g[16], d[16];
        ip_str(a, my_ip);
        ip_str(g, gw_ip);
        ip_str(d, r.dns);
        int bits = 0;
        for (uint32_t m = netmask; m & 0x80000000U; m <<= 1)
            bits++;
        printk("net: DHCP: address %s/%d gateway %s dns %s\n", a, bits, g, d);
        return 1;
    }
    return 0;
}

/* -- UDP echo ---------------------------------------------------------------------------------------- */
struct udp_want { uint16_t port; const unsigned char *payload; int plen; int checksum_ok; };

static int match_udp_echo(const unsigned char *f, int len, void *arg)
{
    struct udp_want *w = arg;
    if (len < 42 || get16(f + 12) != ETH_P_IP || f[23] != 17)
        return 0;
    const unsigned char *ip = f + 14, *udp = ip + (ip[0] & 15) * 4;
    int ulen = get16(udp + 4);
    if (get32(ip + 12) != gw_ip || get16(udp) != echo_port || get16(udp + 2) != w->port)
        return 0;
    if (ulen - 8 != w->plen || udp + ulen > f + len)
        return 0;
    w->checksum_ok = udp_checksum_ok(ip, udp, ulen);
    return !memcmp(udp + 8, w->payload, w->plen);
}

static unsigned char *frame_buf, *payload_buf;      /* 64 KiB and 16 KiB, allocated when the test starts */

static int udp_echo(const char *what, int plen, int csum_offload, unsigned int offset)
{
    static uint16_t sport = 40000;
    struct udp_want w = { .port = ++sport, .payload = payload_buf, .plen = plen };
    for (int i = 0; i < plen; i++)
        payload_buf[i] = (unsigned char)('a' + (i * 7 + plen) % 26);
    int len = udp_frame(frame_buf, gw_mac, my_ip, gw_ip, w.port, echo_port, payload_buf, plen, csum_offload);
    for (int attempt = 0; attempt < 3; attempt++) {
        if (netfront_xmit_at(dev, frame_buf, len, csum_offload ? NETTXF_csum_blank : 0, offset)) {
            check(what, 0);
            return 0;
        }
        if (wait_frame(match_udp_echo, &w, NULL, 0, 2000)) {
            char name[96];
            snprintf(name, sizeof(name), "%s (%d-byte frame)", what, len);
            check(name, w.checksum_ok);
            return 1;
        }
    }
    check(what, 0);
    return 0;
}

/* 2^order pages for n bytes */
static void *alloc_bytes(unsigned long n)
{
    int order = 0;
    while ((PAGE_SIZE << order) < n)
        order++;
    return (void *)alloc_pages(order);
}

static void bring_up(void)
{
    rxq = alloc_bytes(RXQ * sizeof(struct rx_slot));
    frame_buf = alloc_bytes(65536);
    payload_buf = alloc_bytes(16384);
    dev = init_netfront(NULL, net_rx, my_mac);
    if (!dev) {
        printk("net: no network device\n");
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    }
    const char *v;
    if ((v = cmdline_value("port")))
        echo_port = (uint16_t)strtoul(v, NULL, 10);
    if ((v = cmdline_value("ip"))) {
        my_ip = parse_ip(v);
        gw_ip = (v = cmdline_value("gw")) ? parse_ip(v) : (my_ip & 0xFFFFFF00U) | 2;
        netmask = 0xFFFFFF00U;
    } else {
        check("DHCP lease", dhcp());
    }
    char g[16];
    ip_str(g, gw_ip);
    int ok = arp_resolve(gw_ip, gw_mac);
    if (ok)
        printk("net: ARP: %s is at %02x:%02x:%02x:%02x:%02x:%02x\n", g, gw_mac[0], gw_mac[1], gw_mac[2],
               gw_mac[3], gw_mac[4], gw_mac[5]);
    check("ARP for the gateway", ok);
}

static void finish(void)
{
    struct netfront_stats *s = netfront_stats(dev);
    printk("net: tx %lu frames (%lu slots, %lu errors), rx %lu frames (%lu bytes, %lu slots, %lu errors, "
           "%lu dropped), %lu notifications\n", s->tx_frames, s->tx_slots, s->tx_errors, s->rx_frames,
           s->rx_bytes, s->rx_slots, s->rx_errors, rxq_dropped, s->notifies);
    shutdown_netfront(dev);
    HYPERVISOR_shutdown(SHUTDOWN_poweroff);
}

static void echo_thread(void *p)
{
    bring_up();
    if (!failed) {
        udp_echo("UDP echo, one slot", 17, 0, 0);
        udp_echo("UDP echo, a full frame across a page boundary", 1472, 0, 3000);
        udp_echo("UDP echo, checksum offloaded to the backend", 333, 1, 0);
        if (netfront_sg(dev))
            udp_echo("UDP echo, 6000 bytes over several slots each way", 6000, 1, 100);
    }
    printk("netfront test %s: %d/%d checks ok\n", failed ? "FAILED" : "passed", passed, passed + failed);
    int len = udp_frame(frame_buf, gw_mac, my_ip, gw_ip, 40000, echo_port, (const unsigned char *)"bye", 3, 0);
    netfront_xmit(dev, frame_buf, len);
    finish();
}

/* -- the other end: a gateway for another guest --------------------------------------------------------- */
static int match_udp_to_me(const unsigned char *f, int len, void *arg)
{
    if (len < 42 || get16(f + 12) != ETH_P_IP || f[23] != 17 || get32(f + 30) != my_ip)
        return 0;
    const unsigned char *ip = f + 14, *udp = ip + (ip[0] & 15) * 4;
    return udp + get16(udp + 4) <= f + len && get16(udp + 4) >= 8;
}

static void responder_thread(void *p)
{
    const char *v = cmdline_value("ip");
    rxq = alloc_bytes(RXQ * sizeof(struct rx_slot));
    frame_buf = alloc_bytes(65536);
    payload_buf = alloc_bytes(16384);
    my_ip = v ? parse_ip(v) : 0;
    dev = init_netfront(NULL, net_rx, my_mac);
    if (!dev || !my_ip) {
        printk("net: responder needs a network device and ip=\n");
        HYPERVISOR_shutdown(SHUTDOWN_crash);
    }
    char a[16];
    ip_str(a, my_ip);
    printk("net: responder at %s\n", a);
    unsigned char *f = frame_buf + 32768;
    unsigned long echoed = 0;
    for (;;) {
        int len = wait_frame(match_udp_to_me, NULL, f, 32768, 1000);
        if (!len)
            continue;
        const unsigned char *ip = f + 14, *udp = ip + (ip[0] & 15) * 4;
        int plen = get16(udp + 4) - 8;
        if (plen == 3 && !memcmp(udp + 8, "bye", 3))
            break;
        int out = udp_frame(frame_buf, f + 6, my_ip, get32(ip + 12), get16(udp + 2), get16(udp), udp + 8,
                            plen, 0);
        netfront_xmit(dev, frame_buf, out);
        echoed++;
    }
    printk("net: responder echoed %lu datagrams\n", echoed);
    finish();
}

static void bench_thread(void *p)
{
    const char *v;
    unsigned long count = (v = cmdline_value("count")) ? strtoul(v, NULL, 10) : 1000;
    int size = (v = cmdline_value("size")) ? (int)strtoul(v, NULL, 10) : 1472;
    if (size < 1 || size > 16000)
        size = 1472;
    bring_up();
    for (int i = 0; i < size; i++)
        payload_buf[i] = (unsigned char)i;
    int len = udp_frame(frame_buf, gw_mac, my_ip, gw_ip, 40000, echo_port, payload_buf, size, 1);
    s_time_t t0 = NOW();
    for (unsigned long i = 0; i < count; i++)
        netfront_xmit_at(dev, frame_buf, len, NETTXF_csum_blank, 0);
    netfront_flush(dev);
    s_time_t t1 = NOW();
    printk("net bench: %lu frames of %d bytes in %lu us of guest time\n", count, len,
           (unsigned long)((t1 - t0) / 1000));
    finish();
}

/* Called by app_main when `net=` is on the command line: 1 if a network mode started. */
int net_app_main(void)
{
    const char *mode = cmdline_value("net");
    if (!mode)
        return 0;
    if (!strcmp(mode, "bench"))
        create_thread("net_bench", bench_thread, NULL);
    else if (!strcmp(mode, "responder"))
        create_thread("net_responder", responder_thread, NULL);
    else
        create_thread("net_echo", echo_thread, NULL);
    return 1;
}
