"""blkif request processing for one ring (Linux's drivers/block/xen-blkback/blkback.c).

A notification from the frontend runs `BlkRing.do_block_io_op`: every request the frontend produced is taken
(while there is room for its response), checked and carried out against the image, and answered with its id,
its operation (an indirect request's indirect_op) and a status: BLKIF_RSP_OKAY, BLKIF_RSP_ERROR (bad segment,
grant dom0 cannot map, sectors past the disk, a write to a read-only disk, a host I/O error) or
BLKIF_RSP_EOPNOTSUPP (an operation we do not know, a secure discard, a discard the file system cannot do).
A frontend whose producer index is more than a ring ahead of our responses gets the ring halted, with one
line, as Linux's "Frontend provided bogus ring requests"; the device's other rings, other devices and the
guest carry on.

Data moves between the image and the granted pages directly (preadv/pwritev on the mapped frames). Grants are
mapped per request and unmapped when it completes, except with feature-persistent: then the first
`max_persistent_grants` grants a ring sees stay mapped (read-write, as Linux maps them) until disconnect.
"""
from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, Optional

from miniguest.abi import blkif as B
from miniguest.backends.ring import BackRing, RingOverflow

if TYPE_CHECKING:
    from miniguest.backends.blkback.image import DiskImage
    from miniguest.backends.xenbus import BackendDevice
    from miniguest.hypervisor.host import GrantMapping

#: Linux's MAX_INDIRECT_SEGMENTS (feature-max-indirect-segments): one indirect page of segments
MAX_INDIRECT_SEGMENTS = 256
MAX_INDIRECT_PAGES = (MAX_INDIRECT_SEGMENTS + B.SEGMENTS_PER_INDIRECT_FRAME - 1) // B.SEGMENTS_PER_INDIRECT_FRAME
#: Linux's xen_blkif_max_pgrants: persistent grants kept per ring
MAX_PERSISTENT_GRANTS = 1056
SECTORS_PER_PAGE = 4096 >> B.SECTOR_SHIFT
_SEGS = [struct.Struct("<" + "IBB2x" * n) for n in range(B.BLKIF_MAX_SEGMENTS_PER_REQUEST + 1)]


class RequestError(Exception):
    """A request answered with `status`; `why` is for the log (pr_debug in Linux: not shown by default)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class Stats:
    __slots__ = ("rd_req", "wr_req", "f_req", "ds_req", "oo_req", "rd_sect", "wr_sect", "errors")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class BlkRing:
    """One ring of a vbd (Linux's struct xen_blkif_ring)."""

    def __init__(self, dev: "BackendDevice", vbd: "VbdState", index: int, ring: BackRing,
                 mappings: list["GrantMapping"]) -> None:
        self.dev = dev
        self.vbd = vbd
        self.index = index
        self.ring = ring
        self.mappings = mappings
        self.port: Optional[int] = None
        self.halted: Optional[str] = None
        self.persistent: dict[int, "GrantMapping"] = {}
        self.stats = vbd.stats

    # -- the ring --------------------------------------------------------------------------------------------
    def on_event(self) -> None:
        """The frontend notified us (xen_blkif_be_int, then the xenblkd thread's do_block_io_op)."""
        if self.halted or self.vbd.image is None:
            return
        try:
            while self._block_io_op():
                pass
            while self.ring.final_check_for_requests():
                if not self._block_io_op():
                    break
        except RingOverflow as e:
            self.halted = str(e)
            self.dev.log(f"frontend provided bogus ring requests ({e}); halting ring {self.index} processing")
        finally:
            if self.ring.push_responses() and self.port is not None:
                self.dev.notify(self.port)

    def _block_io_op(self) -> bool:
        """__do_block_io_op: one pass over what the frontend produced. True if more may be waiting."""
        ring = self.ring
        rp = ring.request_prod()
        rc = ring.req_cons
        while rc != rp:
            if ring.cons_overflow(rc):
                break
            raw = ring.read_request(rc, B.REQUEST_SIZE)
            rc = (rc + 1) & 0xFFFFFFFF
            ring.req_cons = rc
            self._dispatch(raw)
        return ring.unconsumed_requests() > 0

    def _respond(self, rid: int, op: int, status: int) -> None:
        self.ring.put_response(B.RESPONSE.pack(rid, op & 0xFF, status))

    def _dispatch(self, raw: bytes) -> None:
        op = raw[0]
        rid = struct.unpack_from("<Q", raw, 8)[0]
        if op == B.BLKIF_OP_INDIRECT:
            op = raw[1]                  # an indirect request is answered with its indirect_op
        try:
            if op in (B.BLKIF_OP_READ, B.BLKIF_OP_WRITE, B.BLKIF_OP_WRITE_BARRIER, B.BLKIF_OP_FLUSH_DISKCACHE) \
                    or raw[0] == B.BLKIF_OP_INDIRECT:
                self._rw(raw)
            elif op == B.BLKIF_OP_DISCARD:
                self._discard(raw)
            else:
                raise RequestError(B.BLKIF_RSP_EOPNOTSUPP, f"unknown operation {op}")
        except RequestError as e:
            self.stats.errors += 1
            if e.status == B.BLKIF_RSP_ERROR:
                self.dev.debug(f"request {rid:#x} ({B.OP_NAMES.get(op, op)}): {e}")
            self._respond(rid, op, e.status)
            return
        self._respond(rid, op, B.BLKIF_RSP_OKAY)

    # -- read, write, barrier, flush, indirect (dispatch_rw_block_io) ----------------------------------------
    def _rw(self, raw: bytes) -> int:
        """Carry out a read/write/barrier/flush/indirect request; returns the operation for the response."""
        operation, nseg, _handle, _rid, sector = B.REQUEST.unpack_from(raw)
        vbd = self.vbd
        flush = operation in (B.BLKIF_OP_WRITE_BARRIER, B.BLKIF_OP_FLUSH_DISKCACHE)
        if operation == B.BLKIF_OP_INDIRECT:
            _, op, nseg, _rid, sector, _handle, *igrefs = B.REQUEST_INDIRECT.unpack_from(raw)
            if op not in (B.BLKIF_OP_READ, B.BLKIF_OP_WRITE):
                raise RequestError(B.BLKIF_RSP_ERROR, f"invalid indirect operation {op}")
            operation = op
            if nseg > MAX_INDIRECT_SEGMENTS or nseg == 0:
                raise RequestError(B.BLKIF_RSP_ERROR, f"bad number of segments in request ({nseg})")
            segs = self._indirect_segments(igrefs, nseg, operation)
        else:
            if (nseg == 0 and not flush) or nseg > B.BLKIF_MAX_SEGMENTS_PER_REQUEST:
                raise RequestError(B.BLKIF_RSP_ERROR, f"bad number of segments in request ({nseg})")
            segs = _SEGS[nseg].unpack_from(raw, B.REQUEST.size) if nseg else ()
        write = operation != B.BLKIF_OP_READ
        # every segment inside its page; the sectors inside the disk (xen_vbd_translate)
        nr_sects = 0
        for i in range(0, len(segs), 3):
            first, last = segs[i + 1], segs[i + 2]
            if last >= SECTORS_PER_PAGE or last < first:
                raise RequestError(B.BLKIF_RSP_ERROR, f"segment {i // 3} covers sectors {first}..{last} of a page")
            nr_sects += last - first + 1
        if write and not vbd.image.writable:      # type: ignore[union-attr]
            raise RequestError(B.BLKIF_RSP_ERROR, "write to a read-only disk")
        if nr_sects and sector + nr_sects > vbd.sectors:
            raise RequestError(B.BLKIF_RSP_ERROR, f"access denied: sectors {sector}..{sector + nr_sects - 1} "
                                                  f"of a {vbd.sectors}-sector disk")
        image = vbd.image
        assert image is not None
        if flush:
            self.stats.f_req += 1
        elif write:
            self.stats.wr_req += 1
        else:
            self.stats.rd_req += 1
        if flush:
            self._host_io(image.flush)            # REQ_PREFLUSH: what was written before is durable
        if nr_sects:
            buffers, temporary = self._map_segments(segs, readonly=write)
            try:
                if write:
                    self._host_io(lambda: image.writev(sector << B.SECTOR_SHIFT, buffers))
                    self.stats.wr_sect += nr_sects
                else:
                    self._host_io(lambda: image.readv(sector << B.SECTOR_SHIFT, buffers))
                    self.stats.rd_sect += nr_sects
            finally:
                for m in temporary:
                    self.dev.unmap_grant(m)
            if operation == B.BLKIF_OP_WRITE_BARRIER:
                self._host_io(image.flush)        # (REQ_FUA of the old barrier semantics)
        return operation

    def _host_io(self, fn) -> None:
        try:
            fn()
        except OSError as e:
            self.vbd.report_io_error(e)
            raise RequestError(B.BLKIF_RSP_ERROR, f"host I/O error: {e.strerror or e}") from None

    def _indirect_segments(self, igrefs: list[int], nseg: int, operation: int) -> tuple:
        """xen_blkbk_parse_indirect: the segments in the indirect pages (mapped read-only, then released)."""
        pages = (nseg + B.SEGMENTS_PER_INDIRECT_FRAME - 1) // B.SEGMENTS_PER_INDIRECT_FRAME
        out: list[int] = []
        left = nseg
        for ref in igrefs[:pages]:
            m = self._map(ref, readonly=True)
            if m is None:
                raise RequestError(B.BLKIF_RSP_ERROR, f"indirect page grant {ref} cannot be mapped")
            mapping, temporary = m
            try:
                n = min(left, B.SEGMENTS_PER_INDIRECT_FRAME)
                out.extend(struct.unpack_from("<" + "IBB2x" * n, mapping.view))  # type: ignore[arg-type]
                left -= n
            finally:
                if temporary:
                    self.dev.unmap_grant(mapping)
        return tuple(out)

    def _map(self, ref: int, readonly: bool) -> Optional[tuple["GrantMapping", bool]]:
        """A mapping of grant `ref`: (mapping, True if it must be unmapped after the request) or None."""
        if self.vbd.persistent:
            m = self.persistent.get(ref)
            if m is not None:
                return m, False
            try:
                m = self.dev.map_grant(ref, readonly=False)      # persistent grants are mapped read-write
            except Exception:
                return None
            if len(self.persistent) < MAX_PERSISTENT_GRANTS:
                self.persistent[ref] = m
                return m, False
            return m, True
        try:
            return self.dev.map_grant(ref, readonly=readonly), True
        except Exception:
            return None

    def _map_segments(self, segs: tuple, readonly: bool) -> tuple[list[memoryview], list["GrantMapping"]]:
        buffers: list[memoryview] = []
        temporary: list["GrantMapping"] = []
        try:
            for i in range(0, len(segs), 3):
                ref, first, last = segs[i], segs[i + 1], segs[i + 2]
                m = self._map(ref, readonly)
                if m is None:
                    raise RequestError(B.BLKIF_RSP_ERROR, f"invalid buffer: grant {ref} cannot be mapped")
                mapping, temp = m
                if temp:
                    temporary.append(mapping)
                view = mapping.view
                assert view is not None
                buffers.append(view[first << B.SECTOR_SHIFT:(last + 1) << B.SECTOR_SHIFT])
        except RequestError:
            for mp in temporary:
                self.dev.unmap_grant(mp)
            raise
        return buffers, temporary

    # -- discard (dispatch_discard_io) ----------------------------------------------------------------------
    def _discard(self, raw: bytes) -> None:
        _, flag, _handle, _rid, sector, nr = B.REQUEST_DISCARD.unpack_from(raw)
        vbd = self.vbd
        image = vbd.image
        assert image is not None
        if flag & B.BLKIF_DISCARD_SECURE:
            raise RequestError(B.BLKIF_RSP_EOPNOTSUPP, "secure discard is not supported")
        if not image.writable:
            raise RequestError(B.BLKIF_RSP_ERROR, "discard on a read-only disk")
        if sector + nr < sector or sector + nr > vbd.sectors:
            raise RequestError(B.BLKIF_RSP_ERROR, f"access denied: discard of sectors {sector}+{nr} of a "
                                                  f"{vbd.sectors}-sector disk")
        self.stats.ds_req += 1
        try:
            image.discard(sector << B.SECTOR_SHIFT, nr << B.SECTOR_SHIFT)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise RequestError(B.BLKIF_RSP_EOPNOTSUPP, "the image's file system cannot discard") from None
            vbd.report_io_error(e)
            raise RequestError(B.BLKIF_RSP_ERROR, f"host I/O error: {e.strerror}") from None

    # -- teardown ---------------------------------------------------------------------------------------------
    def release(self) -> None:
        """Unbind, unmap the persistent grants and the ring (xen_blkif_disconnect for this ring)."""
        if self.port is not None:
            self.dev.unbind_evtchn(self.port)
            self.port = None
        for m in self.persistent.values():
            self.dev.unmap_grant(m)
        self.persistent.clear()
        self.dev.unmap_ring(self.mappings)
        self.mappings = []


class VbdState:
    """What blkback keeps for one vbd (Linux's backend_info + xen_blkif + xen_vbd)."""

    def __init__(self) -> None:
        self.image: Optional["DiskImage"] = None
        self.readonly = True
        self.cdrom = False
        self.rings: list[BlkRing] = []
        self.persistent = False
        self.stats = Stats()
        self.connect_wanted = False
        self._io_errors = 0
        self.report = lambda msg: None

    @property
    def sectors(self) -> int:
        return self.image.sectors if self.image is not None else 0

    def report_io_error(self, e: OSError) -> None:
        self._io_errors += 1
        if self._io_errors <= 3:
            self.report(f"host I/O error on the image: {e.strerror or e}")
