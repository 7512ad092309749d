"""Linux bzImage kernels: find the compressed vmlinux inside and decompress it, as Xen's PV loader does
(tools/libs/guest/xg_dom_bzimageloader.c).

The x86 boot protocol's setup header (Documentation/arch/x86/boot.rst): setup_sects at 0x1f1 (0 means 4),
"HdrS" at 0x202, the protocol version at 0x206 (2.08 or later has the payload fields), payload_offset at
0x248 and payload_length at 0x24c, relative to the protected-mode code at (setup_sects + 1) * 512. The payload
is the vmlinux ELF compressed with one of gzip, bzip2, xz, lzma, lzo (lzop container), lz4 (legacy frame) or
zstd, chosen by its magic bytes. Linux's build appends the decompressed size as a 4-byte little-endian number
(for gzip it is the gzip trailer's ISIZE).

Host memory stays bounded: the recorded size is checked against the limit (the guest's memory) before
anything is decompressed, every decompressor is driven with an output cap, and a payload that produces more
than it recorded, or less, is refused. Every failure is an ImageError with one line saying why.
"""
from __future__ import annotations

import bz2
import io
import lzma
import struct
import zlib
from typing import Callable

import lz4.block
import zstandard

from miniguest.toolstack.image_error import ImageError

SETUP_SECTS = 0x1f1
HDR_MAGIC_OFF = 0x202
HDR_MAGIC = b"HdrS"
VERSION_OFF = 0x206
PAYLOAD_OFFSET_OFF = 0x248
PAYLOAD_LENGTH_OFF = 0x24c
HEADER_END = 0x250                     # the setup header up to payload_length
MIN_VERSION = 0x0208
CHUNK = 1 << 20                        # output produced per step while decompressing
LZMA_MEMLIMIT = 256 << 20              # Xen's LZMA_BLOCK_SIZE: the most an xz/lzma decoder may allocate
ZSTD_MAX_WINDOW = 1 << 27              # zstd's default window limit (128 MiB; Linux uses -22 --ultra)
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20             # a legacy-frame block decompresses to at most 8 MiB
LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"
LZOP_MAX_BLOCK = 64 << 20              # Xen's LZOP_MAX_BLOCK_SIZE
MiB = 1 << 20


class DecompressError(Exception):
    """A payload that does not decompress; str() is the reason."""


def is_bzimage(data: bytes) -> bool:
    return data[HDR_MAGIC_OFF:HDR_MAGIC_OFF + 4] == HDR_MAGIC


def payload(data: bytes, path: str) -> bytes:
    """The compressed payload of a bzImage (boot protocol 2.08+)."""
    if len(data) < HEADER_END:
        raise ImageError(f"{path}: truncated bzImage: the setup header needs {HEADER_END} bytes, the file has "
                         f"{len(data)}")
    version = struct.unpack_from("<H", data, VERSION_OFF)[0]
    if version < MIN_VERSION:
        raise ImageError(f"{path}: bzImage boot protocol {version >> 8}.{version & 0xff:02d} is too old "
                         "(2.08 or later carries the payload)")
    setup_sects = data[SETUP_SECTS] or 4
    offset = (setup_sects + 1) * 512 + struct.unpack_from("<I", data, PAYLOAD_OFFSET_OFF)[0]
    length = struct.unpack_from("<I", data, PAYLOAD_LENGTH_OFF)[0]
    if offset >= len(data):
        raise ImageError(f"{path}: truncated bzImage: the payload starts at {offset:#x}, past the end of the "
                         f"file ({len(data):#x} bytes)")
    if offset + length > len(data):
        raise ImageError(f"{path}: truncated bzImage: the payload ({length:#x} bytes at {offset:#x}) runs past "
                         f"the end of the file ({len(data):#x} bytes)")
    return data[offset:offset + length]


def extract(data: bytes, path: str, limit: int) -> tuple[bytes, str]:
    """Decompress a bzImage's payload (the vmlinux ELF), producing at most `limit` bytes. Returns the
    decompressed bytes and the compression format's name."""
    blob = payload(data, path)
    for magic, name, fn in FORMATS:
        if blob.startswith(magic):
            break
    else:
        raise ImageError(f"{path}: bzImage payload has an unknown compression format (magic "
                         f"{blob[:6].hex(' ')})")
    if len(blob) < len(magic) + 4:
        raise ImageError(f"{path}: truncated bzImage payload ({name}: {len(blob)} bytes)")
    size = struct.unpack_from("<I", blob, len(blob) - 4)[0]
    if size > limit:
        raise ImageError(f"{path}: the kernel decompresses to {size / MiB:.1f} MiB, more than the "
                         f"{limit / MiB:.0f} MiB of guest memory (give more with -m)")
    try:
        out = fn(blob, size)
    except DecompressError as e:
        raise ImageError(f"{path}: cannot {name}-decompress the bzImage payload: {e}") from None
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error, MemoryError) as e:
        raise ImageError(f"{path}: cannot {name}-decompress the bzImage payload: {e}") from None
    if len(out) != size:
        raise ImageError(f"{path}: the {name} payload decompresses to {len(out)} bytes, not the {size} it "
                         "records (truncated or corrupt)")
    return bytes(out), name


class _Sink:
    """Collects output, refusing to grow past the size the payload recorded."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = bytearray()

    def room(self) -> int:
        return self.size - len(self.buf)

    def add(self, data: bytes) -> None:
        if len(data) > self.room():
            raise DecompressError(f"output runs past the recorded size of {self.size} bytes")
        self.buf += data


def _stream(decoder, data: bytes, size: int) -> bytearray:
    """Drive a bz2/lzma-style decompressor (decompress(data, max_length), needs_input, eof) with an output
    cap. One extra byte of room detects a stream longer than recorded."""
    sink = _Sink(size)
    pending = data
    while not decoder.eof:
        want = min(CHUNK, sink.room() + 1)
        out = decoder.decompress(pending, max_length=want)
        pending = b""
        sink.add(out)
        if decoder.eof:
            break
        if decoder.needs_input:
            raise DecompressError("unexpected end of input")
    return sink.buf


def _gzip(blob: bytes, size: int) -> bytearray:
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    sink = _Sink(size)
    pending = blob
    while not d.eof:
        out = d.decompress(pending, min(CHUNK, sink.room() + 1))
        sink.add(out)
        pending = d.unconsumed_tail
        if not out and not pending and not d.eof:
            raise DecompressError("unexpected end of input")
    return sink.buf


def _bzip2(blob: bytes, size: int) -> bytearray:
    return _stream(bz2.BZ2Decompressor(), blob[:-4], size)


def _xz(blob: bytes, size: int) -> bytearray:
    return _stream(lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT), blob[:-4], size)


def _lzma(blob: bytes, size: int) -> bytearray:
    return _stream(lzma.LZMADecompressor(lzma.FORMAT_ALONE, memlimit=LZMA_MEMLIMIT), blob[:-4], size)


def _zstd(blob: bytes, size: int) -> bytearray:
    sink = _Sink(size)
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    try:
        with dctx.stream_reader(io.BytesIO(blob[:-4]), read_across_frames=True) as reader:
            while True:
                out = reader.read(min(CHUNK, sink.room() + 1))
                if not out:
                    break
                sink.add(out)
    except zstandard.ZstdError as e:
        raise DecompressError(str(e)) from None
    return sink.buf


def _lz4(blob: bytes, size: int) -> bytearray:
    """LZ4 legacy frame (`lz4 -l`): the magic, then blocks of {u32 compressed size, data}, each block
    decompressing to at most 8 MiB; the magic may repeat (concatenated frames)."""
    sink = _Sink(size)
    end = len(blob) - 4
    pos = 4
    while pos < end:
        if end - pos < 4:
            raise DecompressError("truncated block header")
        chunk = struct.unpack_from("<I", blob, pos)[0]
        pos += 4
        if chunk == LZ4_LEGACY_MAGIC:
            continue
        if chunk > end - pos:
            raise DecompressError(f"a block of {chunk} bytes runs past the end of the payload")
        try:
            out = lz4.block.decompress(blob[pos:pos + chunk], uncompressed_size=LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError:
            raise DecompressError(f"corrupt block at payload offset {pos - 4:#x}") from None
        sink.add(out)
        pos += chunk
    return sink.buf


# -- LZO ------------------------------------------------------------------------------------------------
# lzop's container (as Linux's lib/decompress_unlzo.c and Xen read it), big-endian fields: the 9-byte magic,
# version, library version, [version needed to extract if version >= 0x0940], method, [level if >= 0x0940],
# flags, [filter if F_H_FILTER], mode, mtime_low, [mtime_high if >= 0x0940], name (length byte + bytes),
# header checksum. Then blocks: uncompressed length (0 ends the stream), compressed length, a checksum of
# the uncompressed data if F_ADLER32_D/F_CRC32_D, one of the compressed data if F_ADLER32_C/F_CRC32_C and the
# block is compressed, and the data (stored as is when both lengths are equal).
F_ADLER32_D = 0x00000001
F_ADLER32_C = 0x00000002
F_H_FILTER = 0x00000800
F_CRC32_D = 0x00000100
F_CRC32_C = 0x00000200


def _lzo(blob: bytes, size: int) -> bytearray:
    data = memoryview(blob)[:len(blob) - 4]
    n = len(data)

    def need(pos: int, count: int, what: str) -> None:
        if pos + count > n:
            raise DecompressError(f"truncated lzop {what}")

    need(0, 16, "header")
    if bytes(data[:9]) != LZOP_MAGIC:
        raise DecompressError("bad lzop magic")
    version = struct.unpack_from(">H", data, 9)[0]
    pos = 13 + (2 if version >= 0x0940 else 0)
    method = data[pos]
    pos += 1
    if version >= 0x0940:
        pos += 1                                   # level
    if method not in (1, 2, 3):                    # M_LZO1X_1, M_LZO1X_1_15, M_LZO1X_999
        raise DecompressError(f"lzop method {method} is not LZO1X")
    need(pos, 4, "header")
    flags = struct.unpack_from(">I", data, pos)[0]
    pos += 4
    if flags & F_H_FILTER:
        pos += 4
    pos += 8 + (4 if version >= 0x0940 else 0)     # mode, mtime_low, mtime_high
    need(pos, 1, "header")
    pos += 1 + data[pos] + 4                       # file name, header checksum
    need(pos, 0, "header")
    sink = _Sink(size)
    while True:
        need(pos, 4, "block header")
        dst_len = struct.unpack_from(">I", data, pos)[0]
        pos += 4
        if dst_len == 0:
            break
        if dst_len > LZOP_MAX_BLOCK:
            raise DecompressError(f"block of {dst_len} bytes is larger than lzop's {LZOP_MAX_BLOCK}")
        need(pos, 4, "block header")
        src_len = struct.unpack_from(">I", data, pos)[0]
        pos += 4
        d_sum = c_sum = None
        if flags & (F_ADLER32_D | F_CRC32_D):
            need(pos, 4, "block header")
            d_sum = struct.unpack_from(">I", data, pos)[0]
            pos += 4
        if src_len < dst_len and flags & (F_ADLER32_C | F_CRC32_C):
            need(pos, 4, "block header")
            c_sum = struct.unpack_from(">I", data, pos)[0]
            pos += 4
        if src_len == 0 or src_len > dst_len:
            raise DecompressError(f"bad block lengths (compressed {src_len}, uncompressed {dst_len})")
        need(pos, src_len, "block")
        if dst_len > sink.room():
            raise DecompressError(f"output runs past the recorded size of {size} bytes")
        src = data[pos:pos + src_len]
        pos += src_len
        if c_sum is not None and _lzo_checksum(flags & F_CRC32_C, src) != c_sum:
            raise DecompressError("compressed block checksum mismatch")
        out = lzo1x_decompress(src, dst_len) if src_len < dst_len else bytes(src)
        if len(out) != dst_len:
            raise DecompressError(f"a block decompressed to {len(out)} bytes instead of {dst_len}")
        if d_sum is not None and _lzo_checksum(flags & F_CRC32_D, out) != d_sum:
            raise DecompressError("block checksum mismatch")
        sink.add(out)
    return sink.buf


def _lzo_checksum(crc: int, data) -> int:
    return zlib.crc32(data) if crc else zlib.adler32(data)


def lzo1x_decompress(src, limit: int) -> bytearray:
    """Decompress one LZO1X block (the bitstream lzop and Linux's lzo1x_decompress_safe read), producing at
    most `limit` bytes. Raises DecompressError on any overrun, a look-behind before the start of the output,
    or a missing end-of-stream marker.

    Instructions (after the first byte, which may open with a literal run of byte-17 bytes):
      0000LLLL after a match (state 0): literal run of 3 + L bytes (L = 0: 18 + 255 per zero byte + next byte)
      0000DDSS after 1-3 literals: 2-byte match at distance (H << 2) + D + 1, H the next byte
      0000DDSS after >= 4 literals: 3-byte match at distance (H << 2) + D + 2049
      0001HLLL: match of 2 + L bytes (L = 0: 9 + ...), distance 16384 + (H << 14) + (LE16 >> 2);
                distance 16384 exactly ends the stream
      001LLLLL: match of 2 + L bytes (L = 0: 33 + ...), distance (LE16 >> 2) + 1
      01LDDDSS: match of 3 + L bytes, distance (H << 3) + D + 1
      1LLDDDSS: match of 5 + L bytes, distance (H << 3) + D + 1
    SS (the low two bits of the instruction, or of the LE16's first byte) are literals that follow the match.
    """
    ip = bytes(src)
    n = len(ip)
    out = bytearray()
    i = 0

    def fail(why: str) -> None:
        raise DecompressError(f"LZO1X: {why}")

    def long_length(i: int, base: int) -> tuple[int, int]:
        extra = 0
        while True:
            if i >= n:
                fail("input overrun")
            b = ip[i]
            i += 1
            if b:
                return base + extra + b, i
            extra += 255
            if extra > limit:
                fail("output overrun")

    def literals(i: int, count: int) -> int:
        if i + count > n:
            fail("input overrun")
        if len(out) + count > limit:
            fail("output overrun")
        out.extend(ip[i:i + count])
        return i + count

    def copy_match(dist: int, length: int) -> None:
        have = len(out)
        if dist > have or dist <= 0:
            fail("look-behind overrun")
        if have + length > limit:
            fail("output overrun")
        start = have - dist
        if dist >= length:
            out.extend(out[start:start + length])
        else:
            pattern = bytes(out[start:])
            reps = length // dist + 1
            out.extend((pattern * reps)[:length])

    if n == 0:
        fail("input overrun")
    state = 0                       # literals copied by the last instruction: 0, 1-3, or 4 (= "4 or more")
    if ip[0] > 17:
        t = ip[0] - 17
        i = literals(1, t)
        state = 4 if t >= 4 else t
    while True:
        if i >= n:
            fail("input overrun (no end-of-stream marker)")
        t = ip[i]
        i += 1
        if t < 16:
            if state == 0:
                # A literal run.
                if t == 0:
                    t, i = long_length(i, 15)
                i = literals(i, t + 3)
                state = 4
                continue
            if i >= n:
                fail("input overrun")
            h = ip[i]
            i += 1
            if state == 4:
                copy_match((h << 2) + (t >> 2) + 2049, 3)
            else:
                copy_match((h << 2) + (t >> 2) + 1, 2)
            s = t & 3
        elif t >= 64:
            if i >= n:
                fail("input overrun")
            h = ip[i]
            i += 1
            copy_match((h << 3) + ((t >> 2) & 7) + 1, (t >> 5) + 1)
            s = t & 3
        elif t >= 32:
            length = t & 31
            if length == 0:
                length, i = long_length(i, 31)
            if i + 2 > n:
                fail("input overrun")
            d = ip[i] | (ip[i + 1] << 8)
            i += 2
            copy_match((d >> 2) + 1, length + 2)
            s = d & 3
        else:
            length = t & 7
            if length == 0:
                length, i = long_length(i, 7)
            if i + 2 > n:
                fail("input overrun")
            d = ip[i] | (ip[i + 1] << 8)
            i += 2
            dist = ((t & 8) << 11) + (d >> 2)
            if dist == 0:
                # End of stream (distance 16384).
                if i != n:
                    fail(f"{n - i} bytes of input after the end-of-stream marker")
                return out
            copy_match(dist + 0x4000, length + 2)
            s = d & 3
        if s:
            i = literals(i, s)
        state = s


FORMATS: list[tuple[bytes, str, Callable[[bytes, int], bytearray]]] = [
    (b"\x1f\x8b", "gzip", _gzip),
    (b"BZh", "bzip2", _bzip2),
    (b"\xfd7zXZ\x00", "xz", _xz),
    (b"\x28\xb5\x2f\xfd", "zstd", _zstd),
    (b"\x5d\x00", "lzma", _lzma),
    (b"\x89LZO", "lzo", _lzo),
    (b"\x02\x21\x4c\x18", "lz4", _lz4),
]
