/*
 * The network split driver's shared structures (xen/include/public/io/netif.h and io/ring.h), and
 * minios's netfront, shaped like Mini-OS's netfront.h.
 */
#ifndef MINIOS_NETFRONT_H
#define MINIOS_NETFRONT_H
#include "minios.h"

typedef uint32_t RING_IDX;
typedef uint32_t grant_ref_t;

/* io/ring.h: the shared header of every ring, entries from byte 64 */
struct sring_header {
    RING_IDX req_prod, req_event;
    RING_IDX rsp_prod, rsp_event;
    uint8_t pvt[4];
    uint8_t pad[44];
};

#define NETTXF_csum_blank      (1U << 0)
#define NETTXF_data_validated  (1U << 1)
#define NETTXF_more_data       (1U << 2)
#define NETTXF_extra_info      (1U << 3)
#define NETRXF_data_validated  (1U << 0)
#define NETRXF_csum_blank      (1U << 1)
#define NETRXF_more_data       (1U << 2)
#define NETRXF_extra_info      (1U << 3)
#define NETIF_RSP_DROPPED  -2
#define NETIF_RSP_ERROR    -1
#define NETIF_RSP_OKAY      0
#define NETIF_RSP_NULL      1
#define XEN_NETIF_EXTRA_FLAG_MORE 1

struct netif_tx_request { grant_ref_t gref; uint16_t offset; uint16_t flags; uint16_t id; uint16_t size; };
struct netif_tx_response { uint16_t id; int16_t status; };
struct netif_rx_request { uint16_t id; uint16_t pad; grant_ref_t gref; };
struct netif_rx_response { uint16_t id; uint16_t offset; uint16_t flags; int16_t status; };
struct netif_extra_info { uint8_t type; uint8_t flags; uint16_t pad[3]; };

union netif_tx_entry { struct netif_tx_request req; struct netif_tx_response rsp; };
union netif_rx_entry { struct netif_rx_request req; struct netif_rx_response rsp; };
struct netif_tx_sring { struct sring_header h; union netif_tx_entry ring[]; };
struct netif_rx_sring { struct sring_header h; union netif_rx_entry ring[]; };

/* __CONST_RING_SIZE: (4096 - 64) / 12 = 336 -> 256; (4096 - 64) / 8 = 504 -> 256 */
#define NET_TX_RING_SIZE 256
#define NET_RX_RING_SIZE 256

/* Grant references (gnttab.c) */
uint32_t gnttab_grant_access(domid_t domid, unsigned long frame, int readonly);
int gnttab_end_access(uint32_t ref);

struct netfront_stats {
    unsigned long tx_frames, tx_slots, tx_errors, rx_frames, rx_bytes, rx_errors, rx_slots, notifies;
};

struct netfront_dev;
typedef void (*netif_rx_t)(struct netfront_dev *dev, const unsigned char *data, int len, unsigned int flags);

/* Connect to device/vif/<n>: rings, grants, event channel, the xenbus handshake. NULL on failure. */
struct netfront_dev *init_netfront(const char *nodename, netif_rx_t rx, unsigned char rawmac[6]);
/* Queue one frame (copied; split over slots at page boundaries of its buffers). flags: NETTXF_csum_blank
   etc. for the first request. `offset`: where in the first tx page the frame starts (a frame placed near
   the end of a page goes out as several slots). Sleeps while the ring is full. 0 or -1. */
int netfront_xmit_at(struct netfront_dev *dev, const unsigned char *data, int len, unsigned int flags,
                     unsigned int offset);
#define netfront_xmit(dev, data, len) netfront_xmit_at(dev, data, len, 0, 0)
/* Wait until every transmitted frame has its response. */
void netfront_flush(struct netfront_dev *dev);
void shutdown_netfront(struct netfront_dev *dev);
struct netfront_stats *netfront_stats(struct netfront_dev *dev);
const char *netfront_backend(struct netfront_dev *dev);
int netfront_sg(struct netfront_dev *dev);

#endif
