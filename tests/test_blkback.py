"""blkback: the minios sample's blkfront against raw images (read-write, read-only), the store nodes Linux's
blkback writes, and the protocol features (multi-page rings, queues, persistent grants, indirect descriptors,
flush, barrier, discard) driven by a Python frontend acting as the guest."""
from __future__ import annotations

import hashlib
import os
import struct

import pytest

from miniguest.abi import blkif as B
from miniguest.toolstack.disk import DiskError

from guestlib import SAMPLES, boot, cli
from pyblkfront import PyBlkfront
from pyfront import GTF_reading, GTF_writing, PyGuest

MINIOS = os.path.join(SAMPLES, "minios.elf")


def make_image(path, sectors=8192, pattern=True):
    with open(path, "wb") as f:
        if pattern:
            for i in range(sectors):
                f.write(struct.pack("<Q", i) * 64)
        else:
            f.truncate(sectors * 512)
    return str(path)


def sector_of(path, n):
    with open(path, "rb") as f:
        f.seek(n * 512)
        return f.read(512)


def test_minios_blkfront_read_write(tmp_path):
    img = make_image(tmp_path / "rw.img")
    dom = boot(MINIOS, disks=[f"{img},raw,xvda,rw"])
    text = dom.console.text
    assert "blk: device/vbd/51712: 8192 sectors of 512 bytes, read-write\n" in text
    assert "blk: features: flush-cache 1, barrier 1, discard 1" in text
    for check in ("read first and last sector", "16 page writes in flight", "flush",
                  "16 pages read back in flight", "11-segment write and read back", "marker written to sector 2",
                  "read past the end refused", "reconnect and read back"):
        assert f"blk: {check} ok\n" in text
    assert "blk test passed: 8/8 checks ok" in text
    assert dom.shutdown_reason == "poweroff"
    # what the guest wrote is in the file; what it did not write is untouched
    assert sector_of(img, 2).startswith(b"miniguest minios blkfront was here\n")
    assert sector_of(img, 8191) == struct.pack("<Q", 8191) * 64
    # the domain is gone: its devices with it, and dom0 holds none of its grants
    assert not dom.store.exists(f"/local/domain/0/backend/vbd/{dom.domid}")
    assert not dom.grants.dom0_pins
    dom.close()


def test_minios_blkfront_read_only(tmp_path):
    img = make_image(tmp_path / "ro.img", sectors=4096)
    before = hashlib.sha256(open(img, "rb").read()).hexdigest()
    dom = boot(MINIOS, disks=[f"format=raw, vdev=xvdb, access=ro, target={img}"])
    text = dom.console.text
    assert "blk: device/vbd/51728: 4096 sectors of 512 bytes, read-only, VDISK_READONLY" in text
    assert "blk: features: flush-cache 0, barrier 0, discard 0" in text
    # sector 0 holds eight copies of the number 0, the last sector of 4095
    want0 = "%08x" % _fnv(struct.pack("<Q", 0) * 64)
    assert f"blk: sector 0 checksum {want0}," in text
    assert "blk test passed: 3/3 checks ok" in text
    assert hashlib.sha256(open(img, "rb").read()).hexdigest() == before
    dom.close()


def _fnv(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def test_cli_disk_and_xl_config(tmp_path):
    img = make_image(tmp_path / "a.img", sectors=128, pattern=False)
    r = cli("boot", "minios", "--disk", f"{img},vdev=xvdc", "--quiet", "--console-log", str(tmp_path / "c.log"))
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "c.log").read_text()
    assert "blk: device/vbd/51744: 128 sectors of 512 bytes, read-write" in log and "blk test passed" in log
    cfg = tmp_path / "g.cfg"
    cfg.write_text(f"kernel = '{MINIOS}'\nmemory = 32\ndisk = [ '{img},raw,xvda,ro' ]\n")
    r = cli("boot", str(cfg), "--quiet", "--console-log", str(tmp_path / "d.log"))
    assert r.returncode == 0, r.stderr
    assert "read-only, VDISK_READONLY" in (tmp_path / "d.log").read_text()


@pytest.mark.parametrize("setup,message", [
    (lambda p: p.write_bytes(bytes(1000)), "is not a whole number of 512-byte sectors (truncated image?)"),
    (lambda p: None, "No such file or directory"),
    (lambda p: (p.write_bytes(bytes(1024)), os.chmod(p, 0o200)), "not readable"),
])
def test_bad_images_are_one_line_errors(tmp_path, setup, message):
    p = tmp_path / "bad.img"
    setup(p)
    if os.getuid() == 0 and message == "not readable":
        pytest.skip("root reads any file")
    r = cli("boot", "minios", "--disk", str(p), "--quiet")
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr.decode()


def test_unreadable_image_is_refused_before_building(tmp_path):
    p = tmp_path / "dir.img"
    p.mkdir()
    with pytest.raises(DiskError, match="not a regular file"):
        boot(MINIOS, disks=[f"{p},raw,xvda,rw"])


# -- the protocol, from a Python frontend ---------------------------------------------------------------------
@pytest.fixture
def disk_guest(tmp_path):
    img = make_image(tmp_path / "p.img", sectors=2048)
    g = PyGuest(disks=[f"{img},raw,xvda,rw"])
    g.img = img
    yield g
    g.close()


def test_backend_nodes(disk_guest):
    g = disk_guest
    f = PyBlkfront(g, write_nodes=False)
    assert f.backend("state") == "2"                       # InitWait before the frontend says anything
    assert f.backend("feature-max-indirect-segments") == "256"
    assert f.backend("max-ring-page-order") == "4" and f.backend("multi-queue-max-queues") == "4"
    assert f.backend("mode") == "w" and f.backend("type") == "phy" and f.backend("dev") == "xvda"
    f.write_nodes()
    assert f.connected
    for key, value in (("sectors", "2048"), ("sector-size", "512"), ("physical-sector-size", "512"),
                       ("info", "0"), ("feature-flush-cache", "1"), ("feature-barrier", "1"),
                       ("feature-persistent", "1"), ("feature-discard", "1"), ("discard-granularity", "4096"),
                       ("discard-alignment", "0"), ("discard-secure", "0")):
        assert f.backend(key) == value, key
    assert g.read(f"{f.fe}/virtual-device") == "51712" and g.read(f"{f.fe}/device-type") == "disk"


def test_read_write_flush_barrier(disk_guest):
    g = disk_guest
    f = PyBlkfront(g)
    st, data = f.read_sectors(7, 8)
    assert st == 0 and data == b"".join(struct.pack("<Q", i) * 64 for i in range(7, 15))
    assert f.write_sectors(100, b"\x5a" * 2048) == 0
    mfn, ref = f.buffer(b"\xa5" * 4096, readonly=True)
    rid = f.rw(B.BLKIF_OP_WRITE_BARRIER, 200, [(ref, 0, 7)])
    fl = f.simple(B.BLKIF_OP_FLUSH_DISKCACHE)
    f.push()
    assert sorted(f.responses()) == [(rid, B.BLKIF_OP_WRITE_BARRIER, 0), (fl, B.BLKIF_OP_FLUSH_DISKCACHE, 0)]
    assert sector_of(g.img, 100) == b"\x5a" * 512 and sector_of(g.img, 207) == b"\xa5" * 512
    # segments spread over several pages, partial pages included
    (m1, r1), (m2, r2) = f.buffer(), f.buffer()
    rid = f.rw(B.BLKIF_OP_READ, 10, [(r1, 6, 7), (r2, 0, 2)])
    f.push()
    assert f.responses() == [(rid, B.BLKIF_OP_READ, 0)]
    assert bytes(g.page(m1)[6 * 512:8 * 512]) == struct.pack("<Q", 10) * 64 + struct.pack("<Q", 11) * 64
    assert bytes(g.page(m2)[:512]) == struct.pack("<Q", 12) * 64
    # grants are released when the request completes: only the ring stays mapped
    assert set(g.dom.grants.dom0_pins) == set(f.queues[0]["refs"])
    assert g.grant_flags(r1) & (GTF_reading | GTF_writing) == 0


def test_many_requests_in_flight_and_ring_wrap(disk_guest):
    g = disk_guest
    f = PyBlkfront(g)
    bufs = [f.buffer() for _ in range(32)]
    for rnd in range(5):                         # 160 requests through a 32-slot ring
        ids = [f.rw(B.BLKIF_OP_READ, (i * 8 + rnd) % 2040, [(ref, 0, 0)]) for i, (_, ref) in enumerate(bufs)]
        f.push()
        got = f.responses()
        assert [r[0] for r in got] == ids and all(r[2] == 0 for r in got)
    assert bytes(g.page(bufs[3][0])[:8]) == struct.pack("<Q", 3 * 8 + 4)


def test_multi_page_ring_and_queues(tmp_path):
    img = make_image(tmp_path / "m.img", sectors=1024)
    g = PyGuest(disks=[f"{img},raw,xvda,rw"])
    try:
        f = PyBlkfront(g, order=2, queues=3)
        assert f.connected and f.queues[0]["size"] == 128
        mfn, ref = f.buffer()
        for q in range(3):
            ids = [f.rw(B.BLKIF_OP_READ, 5 + q, [(ref, 0, 0)], queue=q) for _ in range(100)]
            f.push(queue=q)
            assert [r[0] for r in f.responses(queue=q)] == ids
        assert bytes(g.page(mfn)[:8]) == struct.pack("<Q", 7)
        assert any("using 3 queues" in m for m in g.dom.messages)
    finally:
        g.close()


def test_persistent_grants_stay_mapped_until_disconnect(disk_guest):
    g = disk_guest
    f = PyBlkfront(g, persistent=True)
    assert f.connected
    mfn, ref = f.buffer()
    for i in range(3):
        rid = f.rw(B.BLKIF_OP_READ, 50 + i, [(ref, 0, 0)])
        f.push()
        assert f.responses() == [(rid, B.BLKIF_OP_READ, 0)]
        assert bytes(g.page(mfn)[:8]) == struct.pack("<Q", 50 + i)
    assert g.grant_flags(ref) & (GTF_reading | GTF_writing) == GTF_reading | GTF_writing
    assert not g.end_access(ref)
    g.write(f"{f.fe}/state", 5)
    g.write(f"{f.fe}/state", 6)
    assert f.backend("state") == "6" and g.end_access(ref)


def test_indirect_descriptors(disk_guest):
    g = disk_guest
    f = PyBlkfront(g)
    nseg = 40                                    # more than a direct request's 11
    data_pages = [f.buffer() for _ in range(nseg)]
    ind_mfn, ind_ref = f.buffer(readonly=True)
    segs = b"".join(B.SEGMENT.pack(ref, 0, 7) for _, ref in data_pages)
    g.page(ind_mfn)[:len(segs)] = segs
    rid = f.indirect(B.BLKIF_OP_READ, 64, [ind_ref], nseg)
    f.push()
    assert f.responses() == [(rid, B.BLKIF_OP_READ, 0)]    # answered with the indirect_op
    assert bytes(g.page(data_pages[39][0])[:8]) == struct.pack("<Q", 64 + 39 * 8)
    # written back through an indirect write
    for i, (m, _) in enumerate(data_pages):
        g.page(m)[:4096] = bytes([i + 1]) * 4096
    rid = f.indirect(B.BLKIF_OP_WRITE, 512, [ind_ref], nseg)
    f.push()
    assert f.responses() == [(rid, B.BLKIF_OP_WRITE, 0)]
    assert sector_of(g.img, 512 + 39 * 8) == bytes([40]) * 512


def test_discard(disk_guest):
    g = disk_guest
    f = PyBlkfront(g)
    rid = f.discard(16, 8)
    sec = f.discard(16, 8, secure=True)
    f.push()
    res = dict((r[0], r[2]) for r in f.responses())
    assert res[sec] == B.BLKIF_RSP_EOPNOTSUPP
    assert res[rid] in (B.BLKIF_RSP_OKAY, B.BLKIF_RSP_EOPNOTSUPP)      # (a file system without hole punching)
    if res[rid] == B.BLKIF_RSP_OKAY:
        assert sector_of(g.img, 16) == bytes(512) and sector_of(g.img, 24) == struct.pack("<Q", 24) * 64
