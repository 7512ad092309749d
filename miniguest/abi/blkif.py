"""public/io/blkif.h (x86_64 layout): block requests and responses on a blkif ring, and the feature names a
backend and frontend exchange in the store."""
from __future__ import annotations

import struct

BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2
BLKIF_OP_FLUSH_DISKCACHE = 3
BLKIF_OP_RESERVED_1 = 4
BLKIF_OP_DISCARD = 5
BLKIF_OP_INDIRECT = 6
OP_NAMES = {0: "read", 1: "write", 2: "write-barrier", 3: "flush-diskcache", 4: "reserved", 5: "discard",
            6: "indirect"}

BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8
BLKIF_DISCARD_SECURE = 1

BLKIF_RSP_EOPNOTSUPP = -2
BLKIF_RSP_ERROR = -1
BLKIF_RSP_OKAY = 0

VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4

#: a sector in blkif requests is always 512 bytes, whatever sector-size says (blkif.h, "sector-size")
SECTOR_SHIFT = 9

# struct blkif_request: operation, nr_segments, handle, (pad), id, sector_number, seg[11]
REQUEST = struct.Struct("<BBH4xQQ")                 # the fixed part, 24 bytes
SEGMENT = struct.Struct("<IBB2x")                   # blkif_request_segment: gref, first_sect, last_sect
REQUEST_SIZE = REQUEST.size + BLKIF_MAX_SEGMENTS_PER_REQUEST * SEGMENT.size     # 112
# struct blkif_request_discard: operation, flag, handle, (pad), id, sector_number, nr_sectors
REQUEST_DISCARD = struct.Struct("<BBH4xQQQ")
# struct blkif_request_indirect: operation, indirect_op, nr_segments, (pad), id, sector_number, handle, (pad),
# indirect_grefs[8]
REQUEST_INDIRECT = struct.Struct("<BBH4xQQH2x8I")
# struct blkif_response: id, operation, (pad), status
RESPONSE = struct.Struct("<QBxh4x")
RESPONSE_SIZE = RESPONSE.size                      # 16
ENTRY_SIZE = max(REQUEST_SIZE, RESPONSE_SIZE)      # the ring's union entry
SEGMENTS_PER_INDIRECT_FRAME = 4096 // SEGMENT.size  # 512

assert REQUEST_SIZE == 112 and RESPONSE_SIZE == 16 and REQUEST_INDIRECT.size == 60
