"""The backend's half of an io/ring.h shared ring (Linux's BACK_RING_* macros), over granted pages.

The ring lives in pages a frontend granted us; everything in it is written by a guest we do not trust. The
free-running indexes are read once per pass and checked the way Linux's backends check them: a producer more
than a ring ahead of our responses (RING_REQUEST_PROD_OVERFLOW) is a broken or hostile frontend, and the
caller stops servicing that ring; requests are taken only while there is room for their responses
(RING_REQUEST_CONS_OVERFLOW), so a frontend cannot make us queue more than a ring of them. Entries may straddle
the page boundary of a multi-page ring: `PagedBuffer` shows the pages as one buffer, as the contiguous
virtual mapping xenbus_map_ring_valloc gives a Linux backend.
"""
from __future__ import annotations

import struct
from typing import Sequence

from miniguest.abi.ring import (RING_IDX_MASK, SRING_HEADER, SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_EVENT,
                                SRING_RSP_PROD, ring_size)

_U32 = struct.Struct("<I")
PAGE_SIZE = 4096


class PagedBuffer:
    """Pages (memoryviews of granted frames) seen as one contiguous byte buffer."""

    def __init__(self, pages: Sequence[memoryview]) -> None:
        self.pages = list(pages)
        self.size = len(self.pages) * PAGE_SIZE

    def read(self, off: int, n: int) -> bytes:
        page, at = divmod(off, PAGE_SIZE)
        if at + n <= PAGE_SIZE:
            return bytes(self.pages[page][at:at + n])
        out = bytearray()
        while n:
            page, at = divmod(off, PAGE_SIZE)
            k = min(n, PAGE_SIZE - at)
            out += self.pages[page][at:at + k]
            off += k
            n -= k
        return bytes(out)

    def write(self, off: int, data: bytes) -> None:
        page, at = divmod(off, PAGE_SIZE)
        if at + len(data) <= PAGE_SIZE:
            self.pages[page][at:at + len(data)] = data
            return
        pos = 0
        while pos < len(data):
            page, at = divmod(off + pos, PAGE_SIZE)
            k = min(len(data) - pos, PAGE_SIZE - at)
            self.pages[page][at:at + k] = data[pos:pos + k]
            pos += k

    def u32(self, off: int) -> int:
        return _U32.unpack_from(self.pages[0], off)[0]       # header fields: always in the first page

    def set_u32(self, off: int, value: int) -> None:
        _U32.pack_into(self.pages[0], off, value & RING_IDX_MASK)


class RingOverflow(Exception):
    """The frontend's producer index is more than a ring ahead of our responses."""


class BackRing:
    """BACK_RING_INIT over `buf`: our private request consumer and response producer, the shared indexes in
    the ring's header."""

    def __init__(self, buf: PagedBuffer, entry_size: int) -> None:
        self.buf = buf
        self.entry_size = entry_size
        self.size = ring_size(buf.size, entry_size)
        if not self.size:
            raise ValueError(f"a ring of {buf.size} bytes holds no {entry_size}-byte entry")
        self.req_cons = 0
        self.rsp_prod_pvt = 0

    def _slot(self, idx: int) -> int:
        return SRING_HEADER + (idx & (self.size - 1)) * self.entry_size

    # -- requests -----------------------------------------------------------------------------------------
    def request_prod(self) -> int:
        """The frontend's req_prod, checked (RingOverflow when more than a ring ahead of our responses)."""
        rp = self.buf.u32(SRING_REQ_PROD)
        if ((rp - self.rsp_prod_pvt) & RING_IDX_MASK) > self.size:
            raise RingOverflow(f"req_prod {rp:#x} is {(rp - self.rsp_prod_pvt) & RING_IDX_MASK} entries ahead of "
                               f"rsp_prod {self.rsp_prod_pvt:#x} on a ring of {self.size}")
        return rp

    def cons_overflow(self, rc: int) -> bool:
        """RING_REQUEST_CONS_OVERFLOW: no room left for the response of another request."""
        return ((rc - self.rsp_prod_pvt) & RING_IDX_MASK) >= self.size

    def read_request(self, idx: int, n: int) -> bytes:
        """The first `n` bytes of the request at ring index `idx` (a copy: the guest may change the ring)."""
        return self.buf.read(self._slot(idx), min(n, self.entry_size))

    def unconsumed_requests(self) -> int:
        """RING_HAS_UNCONSUMED_REQUESTS."""
        req = (self.buf.u32(SRING_REQ_PROD) - self.req_cons) & RING_IDX_MASK
        rsp = self.size - ((self.req_cons - self.rsp_prod_pvt) & RING_IDX_MASK)
        return max(0, min(req, rsp))

    def final_check_for_requests(self) -> bool:
        """RING_FINAL_CHECK_FOR_REQUESTS: ask for a notification at the next request, then look again."""
        if self.unconsumed_requests():
            return True
        self.buf.set_u32(SRING_REQ_EVENT, self.req_cons + 1)
        return bool(self.unconsumed_requests())

    # -- responses ----------------------------------------------------------------------------------------
    def put_response(self, data: bytes) -> None:
        self.buf.write(self._slot(self.rsp_prod_pvt), data)
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & RING_IDX_MASK

    def push_responses(self) -> bool:
        """RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publish our responses; True if the frontend asked to be told."""
        old = self.buf.u32(SRING_RSP_PROD)
        new = self.rsp_prod_pvt
        self.buf.set_u32(SRING_RSP_PROD, new)
        event = self.buf.u32(SRING_RSP_EVENT)
        return ((new - event) & RING_IDX_MASK) < ((new - old) & RING_IDX_MASK)
