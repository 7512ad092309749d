"""public/io/netif.h: the network split driver's rings, requests, responses and flags (data only).

Both rings are io/ring.h rings of one page (miniguest.abi.ring): the tx ring carries 12-byte slots
(netif_tx_request / netif_tx_response / a tx netif_extra_info), the rx ring 8-byte slots. A frame the
frontend sends is a first request (size = the whole frame), optional extra-info slots, then one request per
further fragment (NETTXF_more_data chains them); a frame the backend delivers is one response per rx request
it filled (status = bytes in that slot, NETRXF_more_data chains them), and an rx response always sits in the
slot of the request it answers.
"""
from __future__ import annotations

import struct

PAGE_SIZE = 4096

XEN_NETIF_NR_SLOTS_MIN = 18          # slots a backend must accept for one frame
XEN_NETIF_MAX_TX_SIZE = 0xFFFF

# -- tx ------------------------------------------------------------------------------------------------------
NETTXF_csum_blank = 1 << 0           # the L4 checksum field holds only the pseudo-header sum (offload)
NETTXF_data_validated = 1 << 1
NETTXF_more_data = 1 << 2            # the frame continues in the next request
NETTXF_extra_info = 1 << 3           # extra-info slots follow this (first) request

TX_REQUEST = struct.Struct("<IHHHH")      # gref, offset, flags, id, size
TX_RESPONSE = struct.Struct("<Hh")        # id, status
TX_SLOT = 12                              # the size of a tx ring entry (the request, the larger member)

# -- rx ------------------------------------------------------------------------------------------------------
NETRXF_data_validated = 1 << 0
NETRXF_csum_blank = 1 << 1
NETRXF_more_data = 1 << 2
NETRXF_extra_info = 1 << 3
NETRXF_gso_prefix = 1 << 4

RX_REQUEST = struct.Struct("<HHI")        # id, pad, gref
RX_RESPONSE = struct.Struct("<HHHh")      # id, offset, flags, status
RX_SLOT = 8

# -- extra info (in a tx request slot or an rx response slot) --------------------------------------------------
XEN_NETIF_EXTRA_TYPE_NONE = 0        # never used: invalid
XEN_NETIF_EXTRA_TYPE_GSO = 1
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3
XEN_NETIF_EXTRA_TYPE_HASH = 4
XEN_NETIF_EXTRA_TYPE_MAX = 5
XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0
EXTRA_NAMES = {1: "gso", 2: "mcast-add", 3: "mcast-del", 4: "hash"}

EXTRA_HEADER = struct.Struct("<BB")       # type, flags; then 6 bytes of type-specific data
EXTRA_GSO = struct.Struct("<BBHBBH")      # type, flags, size, gso type, pad, features
EXTRA_MCAST = struct.Struct("<BB6s")      # type, flags, addr

XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

# -- statuses --------------------------------------------------------------------------------------------------
NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1                   # the response of an extra-info slot

# -- store keys (backend directory unless said otherwise) --------------------------------------------------------
# Written by the backend: feature-sg, feature-rx-copy, feature-rx-flip, feature-multicast-control,
# feature-dynamic-multicast-control, feature-split-event-channels, multi-queue-max-queues, feature-gso-tcpv4/6,
# feature-ipv6-csum-offload, mac, handle. Written by the frontend: tx-ring-ref, rx-ring-ref, event-channel or
# event-channel-tx + event-channel-rx (each under queue-N/ when multi-queue-num-queues > 1), request-rx-copy,
# feature-rx-notify, feature-sg, feature-no-csum-offload, feature-ipv6-csum-offload, feature-gso-tcpv4/6,
# request-multicast-control, multi-queue-num-queues.

ETH_HLEN = 14
ETH_FRAME_LEN = 1514                 # the largest frame without scatter-gather (MTU 1500)
ETH_ZLEN = 60
