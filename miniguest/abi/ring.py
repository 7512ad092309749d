"""public/io/ring.h: the shared-ring header every split driver uses (blkif, netif, ...).

    struct <name>_sring { RING_IDX req_prod, req_event, rsp_prod, rsp_event; uint8_t __pad[48];
                          union <name>_sring_entry ring[]; }

RING_IDX is a free-running uint32. A ring of `nr_pages` pages holds the largest power of two of entries
(each the size of the larger of request and response) that fits after the 64-byte header (__RING_SIZE).
"""
from __future__ import annotations

SRING_REQ_PROD = 0
SRING_REQ_EVENT = 4
SRING_RSP_PROD = 8
SRING_RSP_EVENT = 12
SRING_HEADER = 64                # the entries start here
RING_IDX_MASK = 0xFFFFFFFF


def ring_size(nr_bytes: int, entry_size: int) -> int:
    """__RING_SIZE: entries of a shared ring of `nr_bytes` (rounded down to a power of two)."""
    n = (nr_bytes - SRING_HEADER) // entry_size
    if n <= 0:
        return 0
    return 1 << (n.bit_length() - 1)
