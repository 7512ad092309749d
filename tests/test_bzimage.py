"""Linux bzImage kernels: the compressed ELF inside is found through the setup header and decompressed with
each format Linux builds (gzip, bzip2, xz, lzma, lzo, lz4 legacy frame, zstd), as Xen's PV loader does; every
malformed image is one line and exit 9, with host memory bounded while trying."""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import struct
import subprocess
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniguest.toolstack import bzimage
from miniguest.toolstack.bzimage import DecompressError, lzo1x_decompress
from miniguest.toolstack.libelf import ImageError, parse_kernel

from guestlib import HELLO, boot, cli

ELF = open(HELLO, "rb").read()
SETUP_SECTS = 3
PAYLOAD_OFFSET = 0x2cc          # where Debian's 6.1 kernels put it


def tool(argv: list[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def _lz4_legacy(data: bytes) -> bytes:
    if shutil.which("lz4"):
        return tool(["lz4", "-l", "-9", "-c"], data)
    import lz4.block
    out = struct.pack("<I", 0x184C2102)
    for i in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[i:i + (8 << 20)], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out


def _zstd(data: bytes) -> bytes:
    if shutil.which("zstd"):
        return tool(["zstd", "-19", "-q", "-c"], data)
    import zstandard
    return zstandard.ZstdCompressor(level=19).compress(data)


def _xz(data: bytes) -> bytes:
    # As Linux's scripts/xz_wrap.sh: CRC32 check, the x86 BCJ filter, LZMA2.
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                         filters=[{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 9}])


def _lzo(data: bytes) -> bytes:
    if not shutil.which("lzop"):
        pytest.skip("lzop is not installed (tools/install-test-deps.sh installs it)")
    return tool(["lzop", "-9", "-c"], data)


# name -> compressor producing what Linux's build puts in the payload, before the appended size.
COMPRESSORS = {
    "gzip": lambda d: gzip.compress(d, 9, mtime=0),
    "bzip2": lambda d: bz2.compress(d, 9),
    "xz": _xz,
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    "lzo": _lzo,
    "lz4": _lz4_legacy,
    "zstd": _zstd,
}


def payload_of(fmt: str, data: bytes = ELF) -> bytes:
    blob = COMPRESSORS[fmt](data)
    if fmt != "gzip":                          # gzip's trailer already ends with the size (ISIZE)
        blob += struct.pack("<I", len(data))
    return blob


def make_bzimage(payload: bytes, *, version: int = 0x020f, setup_sects: int = SETUP_SECTS,
                 payload_offset: int = PAYLOAD_OFFSET, payload_length: int | None = None) -> bytes:
    """A bzImage as the x86 boot protocol lays it out: the setup sectors with the header, then the
    protected-mode code with the compressed payload at payload_offset."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1f1] = setup_sects
    setup[0x1fe:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<II", setup, 0x248, payload_offset,
                     len(payload) if payload_length is None else payload_length)
    pm = bytearray(payload_offset) + payload + b"\0" * 64
    return bytes(setup) + bytes(pm)


@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_each_compression_boots(tmp_path, fmt):
    image = tmp_path / f"vmlinuz-{fmt}"
    image.write_bytes(make_bzimage(payload_of(fmt)))
    k = parse_kernel(str(image))
    assert k.compression == fmt and k.elf == ELF and k.raw != ELF
    dom = boot(str(image))
    try:
        assert dom.shutdown_reason == "poweroff"
        assert "hello: 7/7 checks passed" in dom.console.text
        assert dom.symbols.address_of("guest_main")          # symbols come from the decompressed ELF
    finally:
        dom.close()


def test_setup_sects_zero_means_four(tmp_path):
    data = bytearray(make_bzimage(payload_of("gzip"), setup_sects=4))
    data[0x1f1] = 0
    image = tmp_path / "vmlinuz"
    image.write_bytes(bytes(data))
    assert parse_kernel(str(image)).elf == ELF


def test_cli_boots_a_bzimage(tmp_path):
    image = tmp_path / "vmlinuz"
    image.write_bytes(make_bzimage(payload_of("lz4")))
    r = cli("boot", str(image))
    assert r.returncode == 0, r.stderr
    assert b"hello: 7/7 checks passed" in r.stdout


def _gzip_with_size(size_delta: int) -> bytes:
    blob = bytearray(payload_of("gzip"))
    struct.pack_into("<I", blob, len(blob) - 4, len(ELF) + size_delta)
    return bytes(blob)


def _with_size(fmt: str, size: int) -> bytes:
    return payload_of(fmt)[:-4] + struct.pack("<I", size)


def _patched(image: bytes, offset: int, value: int) -> bytes:
    data = bytearray(image)
    struct.pack_into("<I", data, offset, value)
    return bytes(data)


def _truncated(fmt: str) -> bytes:
    blob = payload_of(fmt)
    return blob[:len(blob) // 2] + blob[-4:]       # half the stream, the size still appended


def _corrupt(fmt: str) -> bytes:
    blob = bytearray(payload_of(fmt))
    for i in range(len(blob) // 3, len(blob) // 3 + 64):
        blob[i] ^= 0x5A
    return bytes(blob)


BAD = {
    "truncated_header": (lambda: make_bzimage(payload_of("gzip"))[:0x230], "truncated bzImage: the setup header"),
    "old_protocol": (lambda: make_bzimage(payload_of("gzip"), version=0x0207), "boot protocol 2.07 is too old"),
    "payload_offset_past_end": (lambda: _patched(make_bzimage(payload_of("gzip")), 0x248, 1 << 24),
                                "payload starts at"),
    "payload_length_past_end": (lambda: make_bzimage(payload_of("gzip"), payload_length=1 << 24),
                                "runs past the end of the file"),
    "truncated_file": (lambda: make_bzimage(payload_of("xz"))[:0x1000], "runs past the end of the file"),
    "unknown_compression": (lambda: make_bzimage(b"\x42\x42\x42\x42" + ELF), "unknown compression format"),
    "tiny_payload": (lambda: make_bzimage(b"\x1f\x8b\x08"), "truncated bzImage payload"),
    "larger_than_memory": (lambda: make_bzimage(_with_size("lz4", 33 << 20)),
                           "decompresses to 33.0 MiB, more than the 32 MiB of guest memory"),
    "size_too_small": (lambda: make_bzimage(_gzip_with_size(-100)), "runs past the recorded size"),
    "size_too_large": (lambda: make_bzimage(_with_size("lz4", len(ELF) + 100)), "not the"),
    "size_too_large_gzip": (lambda: make_bzimage(_gzip_with_size(+100)), "incorrect length check"),
    "not_an_elf_inside": (lambda: make_bzimage(payload_of("gzip", b"\0" * 5000)), "is not an ELF file"),
}
for _fmt in sorted(COMPRESSORS):
    BAD[f"truncated_{_fmt}"] = (lambda f=_fmt: make_bzimage(_truncated(f)), f"cannot {_fmt}-decompress|not the")
    BAD[f"corrupt_{_fmt}"] = (lambda f=_fmt: make_bzimage(_corrupt(f)), f"cannot {_fmt}-decompress|not the")


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_bzimage_is_one_line_and_exit_9(tmp_path, case):
    make, message = BAD[case]
    image = tmp_path / f"vmlinuz-{case}"
    image.write_bytes(make())
    with pytest.raises(ImageError, match=message):
        parse_kernel(str(image), max_size=32 << 20)
    r = cli("boot", str(image), "-m", "32")
    err = r.stderr.decode()
    assert r.returncode == 9, err
    assert err.count("\n") == 1 and err.startswith("miniguest: ") and err.rstrip("\n").endswith(
        err.splitlines()[0][len("miniguest: "):]), err


ZEROS = 128 << 20        # 128 MiB of zeros: a few hundred KiB compressed


def _bomb(fmt: str) -> bytes:
    """A payload that decompresses to 128 MiB but claims 4 MiB, compressed in streaming fashion."""
    chunk = bytes(1 << 20)
    if fmt == "gzip":
        c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        out = b"".join(c.compress(chunk) for _ in range(ZEROS >> 20)) + c.flush()
        return out[:-4] + struct.pack("<I", 4 << 20)
    if fmt == "bzip2":
        c = bz2.BZ2Compressor(9)
        out = b"".join(c.compress(chunk) for _ in range(ZEROS >> 20)) + c.flush()
    elif fmt == "xz":
        c = lzma.LZMACompressor(lzma.FORMAT_XZ, preset=1)
        out = b"".join(c.compress(chunk) for _ in range(ZEROS >> 20)) + c.flush()
    elif fmt == "zstd":
        import zstandard
        cobj = zstandard.ZstdCompressor(level=1).compressobj()
        out = b"".join(cobj.compress(chunk) for _ in range(ZEROS >> 20)) + cobj.flush()
    else:
        raise AssertionError(fmt)
    return out + struct.pack("<I", 4 << 20)


@pytest.mark.parametrize("fmt", ["gzip", "bzip2", "xz", "zstd"])
def test_decompression_bomb_stays_bounded(fmt):
    data = make_bzimage(_bomb(fmt))
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="runs past the recorded size"):
            bzimage.extract(data, "bomb", 32 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(data) + (16 << 20), peak     # the input, 4 MiB of output and a chunk, not a gigabyte


def test_lz4_block_bomb_stays_bounded():
    import lz4.block
    block = lz4.block.compress(bytes(8 << 20), store_size=False)
    blob = struct.pack("<I", 0x184C2102) + (struct.pack("<I", len(block)) + block) * 16   # 128 MiB
    data = make_bzimage(blob + struct.pack("<I", 4 << 20))
    with pytest.raises(ImageError, match="runs past the recorded size"):
        bzimage.extract(data, "bomb", 32 << 20)


# -- the LZO1X decompressor, written from the format description --------------------------------------

def _lzop_blocks(data: bytes) -> list[tuple[bytes, int]]:
    """The LZO1X blocks lzop wrote for data: (compressed block, uncompressed length)."""
    blob = _lzo(data)
    version = struct.unpack_from(">H", blob, 9)[0]
    pos = 13 + (2 if version >= 0x0940 else 0) + 1 + (1 if version >= 0x0940 else 0)
    flags = struct.unpack_from(">I", blob, pos)[0]
    pos += 4 + (4 if flags & 0x800 else 0) + 8 + (4 if version >= 0x0940 else 0)
    pos += 1 + blob[pos] + 4
    out = []
    while True:
        dst = struct.unpack_from(">I", blob, pos)[0]
        if dst == 0:
            return out
        src = struct.unpack_from(">I", blob, pos + 4)[0]
        pos += 8 + (4 if flags & 0x101 else 0) + (4 if src < dst and flags & 0x202 else 0)
        out.append((blob[pos:pos + src], dst))
        pos += src


@pytest.mark.parametrize("sample", ["text", "elf", "runs", "random_tail"])
def test_lzo1x_round_trips_lzop_output(sample):
    data = {
        "text": open(__file__, "rb").read() * 3,
        "elf": ELF,
        "runs": b"a" * 70000 + b"ab" * 30000 + bytes(50000) + b"xyz" * 9000,
        "random_tail": ELF[:20000] + os.urandom(3000) + ELF[:20000],
    }[sample]
    blocks = _lzop_blocks(data)
    out = b"".join(bytes(lzo1x_decompress(b, n)) if len(b) < n else b for b, n in blocks)
    assert out == data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=4096))
def test_lzo1x_on_garbage_fails_cleanly_and_bounded(blob, limit):
    try:
        out = lzo1x_decompress(blob, limit)
    except DecompressError:
        return
    assert len(out) <= limit


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=1, max_value=200))
def test_lzo1x_mutated_streams_fail_cleanly(flip, position):
    blocks = _lzop_blocks(ELF)
    block, n = blocks[0]
    mutated = bytearray(block)
    for i, b in enumerate(flip):
        mutated[(position + i * 7) % len(mutated)] ^= b or 1
    try:
        out = lzo1x_decompress(bytes(mutated), n)
    except DecompressError:
        return
    assert len(out) <= n
