/* The block frontend's interface (Mini-OS's include/blkfront.h), and the xenbus states (io/xenbus.h). */
#ifndef BLKFRONT_H
#define BLKFRONT_H
#include "minios.h"

enum xenbus_state {
    XenbusStateUnknown = 0, XenbusStateInitialising = 1, XenbusStateInitWait = 2, XenbusStateInitialised = 3,
    XenbusStateConnected = 4, XenbusStateClosing = 5, XenbusStateClosed = 6,
};
#define BLKIF_MAX_SEGMENTS_PER_REQUEST 11
#define VDISK_CDROM 0x1
#define VDISK_REMOVABLE 0x2
#define VDISK_READONLY 0x4
#define BLK_RDONLY 0
#define BLK_RDWR 2
#ifndef PAGE_MASK
#define PAGE_MASK (~(PAGE_SIZE - 1))
#endif

struct blkfront_info {
    uint64_t sectors;
    unsigned int sector_size;
    int mode;                    /* BLK_RDONLY or BLK_RDWR */
    int info;                    /* VDISK_* */
    int barrier, flush, discard;
};

struct blkfront_dev;
struct blkfront_aiocb {
    struct blkfront_dev *aio_dev;
    uint8_t *aio_buf;            /* 512-byte aligned; at most 11 pages touched */
    size_t aio_nbytes;
    uint64_t aio_offset;         /* bytes */
    void *data;
    uint32_t gref[BLKIF_MAX_SEGMENTS_PER_REQUEST];
    int n;
    volatile int done;
    int status;                  /* BLKIF_RSP_*: 0 ok, -1 error, -2 not supported */
    void (*aio_cb)(struct blkfront_aiocb *aiocb, int ret);
};

struct blkfront_dev *init_blkfront(const char *nodename, struct blkfront_info *info);
void blkfront_aio(struct blkfront_aiocb *aiocbp, int write);
#define blkfront_aio_read(aiocbp) blkfront_aio(aiocbp, 0)
#define blkfront_aio_write(aiocbp) blkfront_aio(aiocbp, 1)
int blkfront_io(struct blkfront_aiocb *aiocbp, int write);
int blkfront_aio_poll(struct blkfront_dev *dev);
void blkfront_wait(struct blkfront_aiocb *aiocbp);
int blkfront_sync(struct blkfront_dev *dev);
void shutdown_blkfront(struct blkfront_dev *dev);
#endif
