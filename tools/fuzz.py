#!/usr/bin/env python3
"""Fuzz miniguest's host-side inputs and the hypercall interface; fail on tracebacks, hangs and audit violations.

    python3 tools/fuzz.py [TARGET ...] [--cases N | --minutes M] [--seed S] [--budget SEC] [--out DIR]
    python3 tools/fuzz.py TARGET --seed S --case I [--show]        reproduce one case (prints its traceback)

Targets (all by default):
  elf        mutated kernel ELFs (the bundled samples and test guests): header, program/section header and
             Xen note fields set to boundary values, byte flips, truncation; parsed, built and run briefly
  xlcfg      generated and mutated xl.cfg files: parsed, and when they parse, the domain is built
  snapshot   mutated snapshot files (header fields at random JSON paths, type confusions, privileged
             selectors and addresses; binary sections re-hashed so they pass the checksum): info, restore,
             a page-type audit and a vCPU-context check of what was restored, a short run, the audit again
  trace      mutated trace files: load, show, name filters, diff against the original, Perfetto export
  xenstore   message sequences from two guest rings, a dom0 socket client and the Python dom0 API, with
             partial and oversized messages and ring-index games: store consistency, bounded queues
  hypercall  random hypercalls with random and structured arguments issued by a running guest's vCPU (the
             syscall path the hypercall page takes), then the guest runs on: page-type audit after each batch
  gdb        gdb remote-protocol packets (framing and commands, monitor commands) to a stub on a live domain
  cli        command lines with odd option values for the non-booting commands and short boots

A finding is a Python exception escaping the code under test (or logged as an internal error by a daemon
that catches it), a domain stopped by "miniguest internal error", a case running past its time budget, a
page-type audit violation, or a restored vCPU context that Xen would refuse. Expected refusals (ImageError,
ConfigError, SnapshotError, TraceFileError, argparse's usage errors, Xen's errnos, a crashed domain) are not
findings. Every case is derived from (target, seed, index) alone, so `--seed S --case I` replays it exactly;
findings are written to DIR (default fuzz-findings/) with the input and the traceback. The summary lists
the cases run and the distinct findings per target.

Each target runs in a child process watched by the parent: a case that does not finish within the budget
is recorded as a hang and the child is restarted at the next case. Run targets one at a time with `nice`
on a shared machine: `nice python3 tools/fuzz.py snapshot --minutes 10`.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import random
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLES = ROOT / "miniguest" / "samples"
GUESTS = ROOT / "tests" / "guests"
SELFTEST = str(GUESTS / "selftest.elf")
HELLO = str(SAMPLES / "hello.elf")
MINIOS = str(SAMPLES / "minios.elf")
PAGE = 4096
U64 = (1 << 64) - 1


class Finding(Exception):
    """Something the code under test must never do (the message says what)."""


class Hang(BaseException):
    """Raised by the in-process alarm when a case overruns its budget (BaseException: not swallowed)."""


# -- values ---------------------------------------------------------------------------------------------------
def boundary_int(rng: random.Random) -> int:
    return rng.choice([
        0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 63, 64, 255, 256, 511, 512, 4095, 4096, 4097, 0x7FF0, 0x7FFF, 0xFFFF,
        0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 47) - 1, 1 << 47, 0xFFFF800000000000,
        0xFFFF82D080000000, (1 << 63) - 1, 1 << 63, U64, U64 - 1, -1, -2, -(1 << 63), 1 << 64, 1 << 100,
        rng.getrandbits(8), rng.getrandbits(16), rng.getrandbits(32), rng.getrandbits(64),
        0xE008, 0xE010, 0xE02B, 0xE033, 0xE02B & ~3, 0xE033 & ~3, 0x10, 0x18, 0x8,
    ])


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of any type (shallow), biased to the confusing ones."""
    r = rng.random()
    if r < 0.35:
        return boundary_int(rng)
    if r < 0.45:
        return rng.choice([None, True, False])
    if r < 0.6:
        return rng.choice(["", "x", "\0", "\udcff"[:0] + "é", "a" * rng.randrange(1, 300), "0x10", "-1", "NaN",
                           "../../etc/passwd", "/local/domain/0", "@releaseDomain", "running", "paused",
                           "hypercall", "zlib", "raw", "r0", "n5"])
    if r < 0.68:
        return rng.choice([1.5, -0.0, 1e308, float("inf"), float("nan")])
    if depth > 2:
        return rng.getrandbits(8)
    if r < 0.84:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {rng.choice(["a", "name", "value", "t", "$type", "v"]): random_json(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}


def deep(n: int) -> Any:
    value: Any = 0
    for _ in range(n):
        value = [value]
    return value


def clone(value: Any) -> Any:
    """A deep copy of JSON data without recursion (values may be nested thousands deep)."""
    if not isinstance(value, (list, dict)):
        return value
    root = [] if isinstance(value, list) else {}
    stack = [(value, root)]
    while stack:
        src, dst = stack.pop()
        items = enumerate(src) if isinstance(src, list) else src.items()
        for k, v in items:
            if isinstance(v, (list, dict)):
                c: Any = [] if isinstance(v, list) else {}
                stack.append((v, c))
                v = c
            if isinstance(dst, list):
                dst.append(v)
            else:
                dst[k] = v
    return root


def json_paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:64]):
            yield from json_paths(v, prefix + (i,))


def get_path(value: Any, path: tuple) -> Any:
    for p in path:
        value = value[p]
    return value


def set_path(root: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    parent = get_path(root, path[:-1])
    parent[path[-1]] = new
    return root


def mutate_json(rng: random.Random, doc: Any, paths: Optional[list] = None, rounds: int = 0) -> Any:
    """Structure-aware mutation: pick JSON paths and replace, perturb, delete, duplicate or nest them."""
    doc = clone(doc)
    if paths is None:
        paths = list(json_paths(doc))
    for _ in range(rounds or rng.choice([1, 1, 1, 2, 3, 5])):
        path = rng.choice(paths)
        try:
            old = get_path(doc, path)
        except (KeyError, IndexError, TypeError):
            continue
        op = rng.random()
        if op < 0.35:
            new = random_json(rng)
        elif op < 0.55 and isinstance(old, int) and not isinstance(old, bool):
            new = rng.choice([old + 1, old - 1, old ^ (1 << rng.randrange(64)), old * 2, -old, old + 4096,
                              old | 3, old & ~3, old + (1 << 32), old << 12])
        elif op < 0.65 and path:
            parent = get_path(doc, path[:-1])
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, list) and path[-1] < len(parent):
                del parent[path[-1]]
            continue
        elif op < 0.75 and isinstance(old, list):
            new = old + [clone(rng.choice(old)) if old else random_json(rng)] * rng.choice([1, 2, 100])
        elif op < 0.8:
            new = deep(rng.choice([70, 500, 5000]))
        elif op < 0.9 and isinstance(old, str):
            new = rng.choice([old + "\0", old * 3, old[:-1], "", old.upper(), "\u0100" + old])
        else:
            try:                        # a copy of another part of the document
                new = clone(get_path(doc, rng.choice(paths)))
            except (KeyError, IndexError, TypeError):
                continue
        try:
            doc = set_path(doc, path, new)
        except (KeyError, IndexError, TypeError):
            pass
    return doc


def mutate_bytes(rng: random.Random, data: bytes, n: Optional[int] = None) -> bytes:
    out = bytearray(data)
    for _ in range(n or rng.choice([1, 1, 2, 4, 8, 32])):
        if not out:
            out += bytes([rng.getrandbits(8)])
            continue
        op = rng.random()
        pos = rng.randrange(len(out))
        if op < 0.5:
            out[pos] ^= 1 << rng.randrange(8)
        elif op < 0.7:
            out[pos] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.getrandbits(8)])
        elif op < 0.8:
            width = rng.choice([2, 4, 8])
            out[pos:pos + width] = (boundary_int(rng) & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        elif op < 0.88:
            del out[pos:pos + rng.randrange(1, 64)]
        elif op < 0.95:
            out[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 32)))
        else:
            del out[pos:]
    return bytes(out)


# -- shared checks ----------------------------------------------------------------------------------------------
def audit_domain(dom: Any, when: str) -> None:
    """The project's page-type audit (hypervisor/x86/page_types.audit_domain: the type-reference recount and
    the mappings reachable from the domain's tables)."""
    from miniguest.hypervisor.x86.page_types import audit_domain as page_type_audit
    problems = page_type_audit(dom)
    if problems:
        raise Finding(f"page-type audit {when}: {problems[:3]}")


def check_domain(dom: Any, when: str) -> None:
    tb = getattr(dom, "internal_traceback", None)
    if tb:
        raise Finding(f"internal error {when}:\n{tb}")
    if dom.crash_report and "internal error" in dom.crash_report:
        raise Finding(f"internal error {when}: {dom.crash_report.splitlines()[0]}")


def check_vcpu_contexts(dom: Any, when: str) -> None:
    """What a restore may leave in a vCPU: nothing Xen's arch_set_info_guest would refuse (privilege)."""
    try:
        from miniguest.hypervisor.x86 import vcpu_context
    except ImportError:
        return
    for v in dom.vcpus:
        problem = vcpu_context.check_live(v)
        if problem:
            raise Finding(f"vCPU {v.id} context {when}: {problem}")


class PauseAfter:
    """Hypercall observer: pause the domain right after its n-th hypercall."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def before(self, vcpu: Any, nr: int, args: tuple) -> None:
        pass

    def after(self, vcpu: Any, nr: int, args: tuple, result: Any) -> None:
        self.seen += 1
        if self.seen == self.n:
            vcpu.domain.pause()


class ErrorLog(logging.Handler):
    """Collects log records at ERROR and above (daemons log their internal errors with log.exception)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def check(self, when: str) -> None:
        if self.records:
            rec = self.records[0]
            self.records.clear()
            text = rec.getMessage()
            if rec.exc_info:
                text += "\n" + "".join(traceback.format_exception(*rec.exc_info))
            raise Finding(f"logged error {when}: {text}")


# -- targets ----------------------------------------------------------------------------------------------------
class Target:
    name = ""
    #: what the last case came to ("refused", "accepted", "ran: <domain state>"), tallied in the summary
    outcome = ""

    def setup(self) -> None:
        """Build the corpus (deterministic); called once per worker process."""

    def generate(self, rng: random.Random) -> Any:
        raise NotImplementedError

    def run(self, case: Any) -> None:
        """Exercise the code under test with `case`; raise Finding (or let an exception escape) on a bug."""
        raise NotImplementedError

    def dump(self, case: Any) -> bytes:
        """The case as a file (kept with a finding)."""
        if isinstance(case, (bytes, bytearray)):
            return bytes(case)
        return repr(case).encode("utf-8", "replace")


def _elf_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every ELF header, program header and section header field, and the note headers."""
    out: list[tuple[int, int]] = [(o, w) for o, w in ((0x10, 2), (0x12, 2), (0x18, 8), (0x20, 8), (0x28, 8),
                                                      (0x34, 2), (0x36, 2), (0x38, 2), (0x3A, 2), (0x3C, 2),
                                                      (0x3E, 2), (4, 1), (5, 1))]
    try:
        phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
        for i in range(min(phnum, 64)):
            b = phoff + i * phentsize
            out += [(b, 4), (b + 4, 4)] + [(b + 8 + 8 * k, 8) for k in range(6)]
            if b + 56 <= len(data) and struct.unpack_from("<I", data, b)[0] == 4:       # PT_NOTE
                off, _, _, filesz = struct.unpack_from("<QQQQ", data, b + 8)
                pos = off
                while pos + 12 <= min(len(data), off + filesz):
                    namesz, descsz, _ = struct.unpack_from("<III", data, pos)
                    out += [(pos, 4), (pos + 4, 4), (pos + 8, 4)]
                    dpos = pos + 12 + ((namesz + 3) & ~3)
                    if descsz in (4, 8):
                        out.append((dpos, descsz))
                    pos = dpos + ((descsz + 3) & ~3)
        for i in range(min(shnum, 64)):
            b = shoff + i * shentsize
            out += [(b, 4), (b + 4, 4), (b + 8, 8), (b + 0x10, 8), (b + 0x18, 8), (b + 0x20, 8), (b + 0x28, 4),
                    (b + 0x2C, 4), (b + 0x30, 8), (b + 0x38, 8)]
    except struct.error:
        pass
    return [(o, w) for o, w in out if o + w <= len(data)]


class ElfTarget(Target):
    name = "elf"

    def setup(self) -> None:
        self.corpus = [Path(p).read_bytes() for p in (HELLO, str(SAMPLES / "faults.elf"), MINIOS, SELFTEST,
                                                      str(GUESTS / "legacy.elf"))]
        self.fields = [_elf_fields(d) for d in self.corpus]

    def generate(self, rng: random.Random) -> bytes:
        k = rng.randrange(len(self.corpus))
        data = bytearray(self.corpus[k])
        fields = self.fields[k]
        for _ in range(rng.choice([1, 1, 2, 3])):
            r = rng.random()
            if r < 0.6 and fields:
                off, width = rng.choice(fields)
                v = rng.choice([boundary_int(rng), len(data), len(data) - 1, len(data) + 1,
                                int.from_bytes(data[off:off + width], "little") + rng.choice([-1, 1, 8, 4096])])
                data[off:off + width] = (v & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
            else:
                data = bytearray(mutate_bytes(rng, bytes(data), rng.choice([1, 4, 16])))
        return bytes(data)

    def run(self, data: bytes) -> None:
        from miniguest.toolstack.libelf import ImageError, parse_kernel
        from miniguest.toolstack.libxl import create_domain
        try:
            parse_kernel("fuzz.elf", data)
            dom = create_domain("fuzz.elf", image_data=data, memory_mib=16, max_instructions=30_000,
                                console_output=lambda b: None)
        except ImageError:
            self.outcome = "refused (ImageError)"
            return
        try:
            self.outcome = f"ran: {dom.run()}"
            check_domain(dom, "running a mutated ELF")
            audit_domain(dom, "after running a mutated ELF")
        finally:
            dom.close()


XL_KEYS = ["kernel", "memory", "maxmem", "name", "cmdline", "extra", "root", "ramdisk", "on_poweroff",
           "on_reboot", "on_crash", "on_watchdog", "vcpus", "vif", "disk", "builder", "type", "uuid"]


class XlcfgTarget(Target):
    name = "xlcfg"

    def setup(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="fuzz-xlcfg-")

    def _value(self, rng: random.Random) -> bytes:
        r = rng.random()
        if r < 0.3:
            return rng.choice([b'"hello.elf"', f'"{HELLO}"'.encode(), b'"/nonexistent"', b'"' + b"x" * 5000 + b'"',
                               b"'single'", b'"unterminated', b'"a\\x00b"', b'"\\u1234"', b'"' + b"\xff\xfe" + b'"',
                               b'r"raw"', b'b"bytes"', b'f"{1}"', b'"""tri"""'])
        if r < 0.55:
            return str(rng.choice([boundary_int(rng), 32, 64, 0, -1, 4096, 4097])).encode()
        if r < 0.65:
            return rng.choice([b"1e999", b"12.5", b"-0.0", b"0x20", b"0o17", b"1_000", b"True", b"None", b"...",
                               b"1j", b"--1", b"-" * 1000 + b"1", b"9" * 5000])
        if r < 0.8:
            return b"[" + b", ".join(self._value(rng) for _ in range(rng.randrange(4))) + b"]"
        if r < 0.85:
            return rng.choice([b"{[]: 1}", b"{1, []}", b"{'a': 1}", b"(1, 2)", b"set()", b"{}", b"()"])
        if r < 0.9:
            return b"[" * rng.choice([10, 100, 1000, 100000]) + b"]" * rng.choice([0, 10, 100000])
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 20)))

    def generate(self, rng: random.Random) -> bytes:
        lines = []
        if rng.random() < 0.9:
            lines.append(b'kernel = "' + (HELLO.encode() if rng.random() < 0.8 else b"missing.elf") + b'"')
        for _ in range(rng.randrange(0, 8)):
            key = rng.choice(XL_KEYS + ["x" * rng.randrange(1, 100), "", "= =", "#c"]).encode()
            sep = rng.choice([b" = ", b"=", b" =", b" : ", b""])
            tail = rng.choice([b"", b";", b" # comment", b"\r", b" \\"])
            lines.append(key + sep + self._value(rng) + tail)
        rng.shuffle(lines)
        text = rng.choice([b"\n", b"\r\n"]).join(lines) + b"\n"
        if rng.random() < 0.3:
            text = mutate_bytes(rng, text)
        return text

    def run(self, text: bytes) -> None:
        from miniguest.toolstack.libelf import ImageError
        from miniguest.toolstack.libxl import create_domain
        from miniguest.toolstack.xlcfg import ConfigError, parse_xl_config
        path = os.path.join(self.tmp, "fuzz.cfg")
        with open(path, "wb") as f:
            f.write(text)
        try:
            cfg = parse_xl_config(path)
        except ConfigError:
            self.outcome = "refused (ConfigError)"
            return
        try:
            dom = create_domain(cfg.kernel, memory_mib=cfg.memory, maxmem=cfg.maxmem, name=cfg.name,
                                cmdline=cfg.cmdline, module=cfg.ramdisk, max_instructions=20_000,
                                console_output=lambda b: None)
        except (ImageError, ConfigError):
            self.outcome = "parsed, refused by the toolstack"
            return
        try:
            self.outcome = f"ran: {dom.run()}"
            check_domain(dom, "running a fuzzed configuration")
        finally:
            dom.close()


class SnapshotTarget(Target):
    name = "snapshot"
    BUDGET = 60_000

    def setup(self) -> None:
        from miniguest import Domain
        from miniguest.regress.snapfile import Container
        from miniguest.regress.snapshot import Snapshot
        self.files: list[bytes] = []
        for path, cmdline, n in ((HELLO, "", 5), (SELFTEST, "mmu", 12), (SELFTEST, "evtchn", 30),
                                 (SELFTEST, "usermode", 6), (MINIOS, "", 60)):
            dom = Domain.from_elf(path, cmdline=cmdline, console_output=lambda b: None)
            dom.hypercall_observers.append(PauseAfter(n))
            dom.run()
            self.files.append(Snapshot.capture(dom).to_bytes())
            dom.close()
        self.containers = [Container.from_bytes(f) for f in self.files]
        self.paths = [list(json_paths(c.header)) for c in self.containers]
        # the places a privilege hides: registers, callbacks, trap table, page-table bases, frame state
        self.hot = [[p for p in paths if any(str(k) in ("regs", "pv", "trap_table", "ports", "dom0", "frames",
                                                         "vm_assist", "iopl", "grants", "connection")
                                             for k in p)] for paths in self.paths]

    def generate(self, rng: random.Random) -> tuple[int, str, Any]:
        k = rng.randrange(len(self.files))
        r = rng.random()
        if r < 0.6:
            paths = self.hot[k] if rng.random() < 0.7 and self.hot[k] else self.paths[k]
            return k, "header", mutate_json(rng, self.containers[k].header, paths)
        if r < 0.85:
            c = self.containers[k]
            name = rng.choice(sorted(c.sections))
            raw = c.sections[name]
            if name == "memory":
                nbm = len(raw) - (len(raw) // PAGE) * PAGE if len(raw) % PAGE else 0
                pos = rng.randrange(len(raw))
                mutated = bytearray(raw)
                for _ in range(rng.choice([1, 8, 64])):
                    p = (pos + rng.randrange(1 << 14)) % len(raw)
                    mutated[p] = rng.getrandbits(8)
                del nbm
                return k, "section", (name, bytes(mutated))
            return k, "section", (name, mutate_bytes(rng, raw, rng.choice([1, 2, 8])))
        return k, "bytes", mutate_bytes(rng, self.files[k], rng.choice([1, 4, 16]))

    def build(self, case: tuple[int, str, Any]) -> bytes:
        from miniguest.regress.snapfile import Container
        k, kind, payload = case
        if kind == "bytes":
            return payload
        base = self.containers[k]
        if kind == "header":
            c = Container(payload if isinstance(payload, dict) else {"x": payload}, base.sections)
        else:
            name, raw = payload
            c = Container(base.header, dict(base.sections, **{name: raw}))
        try:
            return c.to_bytes()
        except (ValueError, TypeError, RecursionError, OverflowError):
            # a value json.dumps itself refuses: write the header text by hand so the reader sees it
            head = (json.dumps(c.header, default=str, allow_nan=True, check_circular=False)
                    if not isinstance(payload, dict) or kind != "header" else _dump_deep(payload)).encode()
            return struct.pack("<8sII", b"\x89MGSNAP\n", 1, len(head)) + head

    def dump(self, case: Any) -> bytes:
        return self.build(case)

    def run(self, case: tuple[int, str, Any]) -> None:
        from miniguest.regress.snapfile import SnapshotError
        from miniguest.regress.snapshot import Snapshot
        data = self.build(case)
        try:
            snap = Snapshot.from_bytes(data, "fuzz.snap")
            snap.info()
            dom = snap.restore(console_output=lambda b: None)
        except SnapshotError as e:
            if "\n" in str(e):
                raise Finding(f"a SnapshotError of more than one line: {str(e)[:200]!r}")
            self.outcome = "refused (SnapshotError)"
            return
        try:
            check_vcpu_contexts(dom, "after restore")
            audit_domain(dom, "after restore")
            if dom.config.max_instructions is None or dom.config.max_instructions > dom.clock.icount + self.BUDGET:
                dom.config.max_instructions = dom.clock.icount + self.BUDGET
            self.outcome = f"restored, ran: {dom.run()}"
            check_domain(dom, "running a restored domain")
            audit_domain(dom, "after running a restored domain")
        finally:
            dom.close()


def _dump_deep(value: Any) -> str:
    """json.dumps without recursion limits (for headers nested deeper than json.dumps allows)."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str) and v.startswith("\x00RAW:"):
            out.append(v[5:])
        elif isinstance(v, dict):
            items = list(v.items())
            stack.append("\x00RAW:}")
            for i, (key, x) in enumerate(reversed(items)):
                stack.append(x)
                stack.append("\x00RAW:" + json.dumps(str(key)) + ":")
                if i < len(items) - 1:
                    stack.append("\x00RAW:,")
            stack.append("\x00RAW:{")
        elif isinstance(v, list):
            stack.append("\x00RAW:]")
            for i, x in enumerate(reversed(v)):
                stack.append(x)
                if i < len(v) - 1:
                    stack.append("\x00RAW:,")
            stack.append("\x00RAW:[")
        else:
            out.append(json.dumps(v, allow_nan=True))
    return "".join(out)


class TraceTarget(Target):
    name = "trace"

    def setup(self) -> None:
        from miniguest import Domain
        from miniguest.debug.tracer import Tracer, header_line
        self.tmp = tempfile.mkdtemp(prefix="fuzz-trace-")
        self.traces: list[list[str]] = []
        for path, cmdline, budget in ((HELLO, "", None), (str(SAMPLES / "faults.elf"), "", 400_000),
                                      (MINIOS, "", 3_000_000)):
            dom = Domain.from_elf(path, cmdline=cmdline, max_instructions=budget, console_output=lambda b: None)
            tracer = Tracer(dom).attach()
            dom.run()
            lines = [header_line({"image": os.path.basename(path)})] + [r.to_json() for r in tracer.records[:400]]
            self.traces.append(lines)
            dom.close()
        try:
            from miniguest.regress import normalise
            dom = Domain.from_elf(HELLO, console_output=lambda b: None)
            tracer = Tracer(dom).attach()
            dom.run()
            recs = normalise.normalise(dom, tracer.records) if hasattr(normalise, "normalise") else None
            if recs:
                self.traces.append([header_line({"image": "hello.elf", "normalised": True})]
                                   + [r.to_json() for r in recs])
            dom.close()
        except Exception:
            pass

    def generate(self, rng: random.Random) -> tuple[int, bytes]:
        k = rng.randrange(len(self.traces))
        lines = list(self.traces[k])
        r = rng.random()
        if r < 0.55:
            for _ in range(rng.choice([1, 1, 2, 4])):
                i = rng.randrange(len(lines))
                try:
                    doc = json.loads(lines[i])
                except (ValueError, RecursionError):      # mutated already in this case
                    continue
                doc = mutate_json(rng, doc)
                try:
                    lines[i] = json.dumps(doc, allow_nan=True)
                except (ValueError, RecursionError):
                    lines[i] = _dump_deep(doc)
        elif r < 0.7:
            for _ in range(rng.choice([1, 3])):
                i = rng.randrange(len(lines))
                op = rng.random()
                if op < 0.3:
                    del lines[i]
                elif op < 0.6:
                    lines.insert(rng.randrange(len(lines) + 1), lines[i])
                else:
                    j = rng.randrange(len(lines))
                    lines[i], lines[j] = lines[j], lines[i]
        text = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
        if r >= 0.7:
            text = mutate_bytes(rng, text, rng.choice([1, 4, 16]))
        return k, text

    def dump(self, case: Any) -> bytes:
        return case[1]

    def run(self, case: tuple[int, bytes]) -> None:
        from miniguest.regress import perfetto
        from miniguest.regress.golden import check as golden_check
        from miniguest.regress.trace_files import (TraceFileError, diff, format_divergence, format_record, load,
                                                 select)
        k, text = case
        path = os.path.join(self.tmp, "fuzz.jsonl")
        orig = os.path.join(self.tmp, f"orig{k}.jsonl")
        with open(path, "wb") as f:
            f.write(text)
        if not os.path.exists(orig):
            with open(orig, "w") as f:
                f.write("\n".join(self.traces[k]) + "\n")
        try:
            tf = load(path)
        except TraceFileError as e:
            if "\n" in str(e):
                raise Finding(f"a TraceFileError of more than one line: {str(e)[:200]!r}")
            self.outcome = "refused (TraceFileError)"
            return
        self.outcome = "loaded"
        for rec in tf.records:
            format_record(rec)
            rec.to_json()
        select(tf.records, ["hypercall", "xenstore"], ["xen_version", "READ", "event_channel_op(send)"])
        base = load(orig)
        div = diff(base.records, tf.records, context=3, ignore=["time"])
        if div is not None:
            format_divergence(div)
        doc = perfetto.export(tf.records, tf.meta)
        json.dumps(doc, allow_nan=True)
        perfetto.validate(doc)
        golden_check(orig, tf.records)


class XenstoreTarget(Target):
    """Two guests on real ring pages, one dom0 socket client on a socketpair and the dom0 Python API."""
    name = "xenstore"
    TYPES = list(range(0, 28)) + [0xFFFF, 1 << 31]

    def setup(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="fuzz-xs-")

    def _path(self, rng: random.Random) -> bytes:
        base = rng.choice([b"", b"data", b"data/a", b"/local/domain/5/data", b"/local/domain/6", b"/local",
                           b"/", b"@introduceDomain", b"@releaseDomain", b"/tool", b"device/vif/0", b"name",
                           b"/local/domain/5", b"../x", b"data//b", b"data/", b"/local/domain/0"])
        for _ in range(rng.choice([0, 0, 1, 2, 8])):
            base += b"/" + rng.choice([b"a", b"b", b"c", b"x" * rng.randrange(1, 300), b"-_@", b"\xff", b" ",
                                       b"\0", b"..", b"."])
        return base

    def _payload(self, rng: random.Random, t: int, txs: list[int]) -> bytes:
        P = self._path
        r = rng.random()
        if r < 0.1:
            return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        if t in (1, 2, 3, 12, 13):                  # directory read get_perms mkdir rm
            return P(rng) + rng.choice([b"\0", b"\0", b"", b"\0\0", b"\0extra"])
        if t == 11:                                 # write
            return P(rng) + b"\0" + bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 10, 2000, 4000])))
        if t == 14:                                 # set_perms
            perms = [rng.choice([b"n5", b"r6", b"b0", b"w5", b"n0", b"q1", b"r", b"n99999999999", b"n-1", b""])
                     for _ in range(rng.randrange(0, 8))]
            return P(rng) + b"\0" + b"\0".join(perms) + rng.choice([b"\0", b""])
        if t in (4, 5):                             # watch unwatch
            return P(rng) + b"\0" + rng.choice([b"tok", b"t" * 2000, b"", b"\xff"]) + rng.choice([b"\0", b""])
        if t == 7:                                  # transaction_end
            return rng.choice([b"T\0", b"F\0", b"X\0", b"T", b""])
        if t in (8, 9, 10, 17, 18, 19):             # domain ops
            return b"\0".join(str(rng.choice([0, 1, 5, 6, 7, 0x7FF0, -1, 1 << 40])).encode()
                              for _ in range(rng.randrange(0, 4))) + b"\0"
        if t == 22:                                 # directory_part
            return P(rng) + b"\0" + str(rng.choice([0, 1, 5, -1, 1 << 33])).encode() + b"\0"
        if t == 0:
            return rng.choice([b"help\0", b"check\0", b"log\0on\0", b"print\0x\0", b"quota\0", b"\0"])
        return P(rng) + b"\0"

    def generate(self, rng: random.Random) -> list[tuple]:
        ops = []
        txs = [0, 1, 2, 3, 1 << 31]
        for _ in range(rng.randrange(5, 60)):
            who = rng.choice(["g5", "g5", "g6", "sock", "dom0"])
            r = rng.random()
            if who == "dom0":
                ops.append(("dom0", rng.choice(["write", "rm", "set_perms", "mkdir"]), self._path(rng),
                            rng.getrandbits(16)))
                continue
            if r < 0.05 and who != "sock":
                ops.append((who, "index", rng.choice([0x800, 0x808, 0x810, 0x814, 0x818, 0x81C, 0x820, 0x824]),
                            boundary_int(rng) & 0xFFFFFFFF))
                continue
            if r < 0.03:
                ops.append((who, "raw", bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 40)))))
                continue
            t = rng.choice(self.TYPES) if rng.random() < 0.1 else rng.choice(
                [1, 2, 2, 3, 4, 4, 5, 6, 7, 11, 11, 11, 12, 13, 14, 22, 10, 17, 21])
            payload = self._payload(rng, t, txs)
            length = len(payload)
            if rng.random() < 0.02:
                length = rng.choice([4097, 0xFFFFFFFF, length + 1, max(0, length - 1)])
            tx = rng.choice(txs) if rng.random() < 0.3 else 0
            ops.append((who, "msg", t, rng.getrandbits(32), tx, length, payload,
                        rng.random() < 0.1))               # last: send only part of it now
            if rng.random() < 0.2:
                ops.append((who, "consume"))
        return ops

    def run(self, ops: list[tuple]) -> None:
        from miniguest.abi import xs_wire as W
        from miniguest.backends.xenstore.daemon import XenstoreDaemon, populate_domain
        from miniguest.backends.xenstore.errors import XenstoreError
        from miniguest.backends.xenstore.guestring import GuestRing
        from miniguest.backends.xenstore.quotas import Quotas
        from miniguest.backends.xenstore.unixsock import SocketConnection
        from miniguest.hypervisor.hostloop import HostLoop
        quotas = Quotas(memory=64 * 1024, outstanding_privileged=64)
        d = XenstoreDaemon(quotas)
        loop = HostLoop()
        rings = {}
        for domid in (5, 6):
            populate_domain(d, domid, name=f"guest{domid}", uuid=f"00000000-0000-0000-0000-{domid:012d}",
                            memory_kib=65536, store_port=1, store_mfn=0x1000 + domid, console_port=2,
                            console_mfn=0x2000 + domid)
            g = GuestRing()
            conn = d.introduce_domain(domid, g.page, g.notify)
            g.server_event = conn.on_event
            rings[f"g{domid}"] = (g, conn)
        def connect() -> tuple[socket.socket, Any]:
            ours, theirs = socket.socketpair()
            theirs.setblocking(False)
            ours.setblocking(False)
            conn = SocketConnection(d, theirs, loop)
            d.add_connection(conn)
            return ours, conn
        ours, sconn = connect()
        hdr = struct.Struct("<IIII")
        pending: dict[str, bytes] = {}            # the rest of a message sent in two parts
        try:
            for op in ops:
                who = op[0]
                if who == "sock" and sconn.closed:  # the daemon dropped it (a protocol error): reconnect
                    ours.close()
                    ours, sconn = connect()
                    pending.pop(who, None)
                if who in rings and rings[who][1].error:
                    rings[who][0].put(W.XS_CONNECTION, W.XENSTORE_RECONNECT)
                    rings[who][1].on_event()
                    pending.pop(who, None)
                if who == "dom0":
                    _, what, path, n = op
                    p = "/" + path.decode("latin-1").strip("/") if path.startswith(b"/") else \
                        "/local/domain/5/" + path.decode("latin-1")
                    try:
                        if what == "write":
                            d.dom0.write(p, b"v" * (n % 3000))
                        elif what == "rm":
                            d.dom0.rm(p)
                        elif what == "mkdir":
                            d.dom0.mkdir(p)
                        else:
                            d.dom0.set_perms(p, ["n5", "r6"] if n & 1 else ["b0"])
                    except (XenstoreError, ValueError):
                        pass
                    continue
                kind = op[1]
                if kind == "raw":
                    data = op[2]
                elif kind == "msg":
                    _, _, t, req, tx, length, payload, partial = op
                    data = pending.pop(who, b"") + hdr.pack(t & 0xFFFFFFFF, req, tx & 0xFFFFFFFF,
                                                            length & 0xFFFFFFFF) + payload
                    if partial:
                        data, pending[who] = data[:len(data) // 2], data[len(data) // 2:]
                else:
                    data = b""
                if who == "sock":
                    if kind == "consume":
                        with contextlib.suppress(BlockingIOError):
                            while ours.recv(65536):
                                pass
                    elif data:
                        with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                            ours.send(data)
                    loop.poll(0)
                    loop.poll(0)
                    continue
                g, conn = rings[who]
                if kind == "index":
                    g.put(op[2], op[3])
                    conn.on_event()
                elif kind == "consume":              # (not g.pull(): the indexes may be garbage)
                    g.put(W.XS_RSP_CONS, g.get(W.XS_RSP_PROD))
                    conn.on_event()
                elif data:
                    g.push(data)
            # invariants: queues bounded, store consistent, every guest still served once it reconnects
            for conn in d.connections:
                if getattr(conn, "out_bytes", 0) > quotas.memory + W.XENSTORE_PAYLOAD_MAX + 16 + 4096:
                    raise Finding(f"dom{conn.domid} has {conn.out_bytes} bytes queued")
            _store_consistent(d)
            for name, (g, conn) in rings.items():
                domid = int(name[1:])
                if d.domains.get(domid) is not conn:
                    continue                    # the dom0 socket client released (or re-introduced) it
                check = f"/local/domain/{domid}/fuzz-check"
                d.dom0.write(check, f"ok{domid}")
                d.dom0.set_perms(check, [f"n{domid}"])
                g.put(W.XS_CONNECTION, W.XENSTORE_RECONNECT)
                conn.on_event()
                fresh = GuestRing(g.buf)
                fresh.server_event = conn.on_event
                try:
                    reply = fresh.call(W.XS_READ, check)
                except RuntimeError as e:
                    reply = str(e).encode()
                if reply != f"ok{domid}".encode():
                    raise Finding(f"{name} not served after reconnecting: {reply[:80]!r}")
        finally:
            ours.close()
            sconn.close()
            d.close()
            loop.close()


def _store_consistent(d: Any) -> None:
    from miniguest.backends.xenstore.paths import child_path, parent_of
    nodes = d.store.nodes
    for name, node in nodes.items():
        if name != "/" and not name.startswith("@"):
            parent = nodes.get(parent_of(name))
            if parent is None:
                raise Finding(f"xenstore: orphan node {name}")
            if name.rsplit("/", 1)[1] not in parent.children:
                raise Finding(f"xenstore: {name} not listed in its parent")
        for child in node.children:
            if child_path(name, child) not in nodes:
                raise Finding(f"xenstore: dangling child {child} of {name}")
    counts: dict[int, int] = {}
    for node in nodes.values():
        counts[node.owner] = counts.get(node.owner, 0) + 1
    if {k: v for k, v in d.store.node_counts.items() if v} != counts:
        raise Finding(f"xenstore: node accounting {dict(d.store.node_counts)} != {counts}")


class HypercallTarget(Target):
    """Hypercalls issued through a running guest vCPU's syscall path, with random and structured arguments."""
    name = "hypercall"
    SKIP = frozenset()

    def generate(self, rng: random.Random) -> tuple[int, int]:
        return rng.getrandbits(32), rng.choice([20, 50, 100])

    def run(self, case: tuple[int, int]) -> None:
        from unicorn import x86_const as X

        from miniguest import Domain
        seed, calls = case
        rng = random.Random(seed)
        # a guest stopped after a random number of its own hypercalls (it has tables, ports, callbacks, a trap
        # table by then), the vCPU inside the hypercall's return path as a real one would be
        image, cmdline, after = rng.choice([
            (SELFTEST, "hang", 1000), (SELFTEST, "evtchn", rng.randrange(1, 40)),
            (SELFTEST, "mmu", rng.randrange(1, 15)), (SELFTEST, "usermode", rng.randrange(1, 8)),
            (SELFTEST, "segments", rng.randrange(1, 30)), (SELFTEST, "xtfgaps2", rng.randrange(1, 200)),
            (SELFTEST, "balloon", rng.randrange(1, 30)), (MINIOS, "", rng.randrange(1, 400))])
        dom = Domain.from_elf(image, cmdline=cmdline, console_output=lambda b: None, max_instructions=3_000_000)
        try:
            dom.hypercall_observers.append(PauseAfter(after))
            state = dom.run()
            dom.hypercall_observers.clear()
            if state == "hung":             # idle with nothing to wake it: the hypercalls below may
                dom.state = "paused"
            elif dom.finished:
                self.outcome = f"guest ended before the hypercalls ({state})"
                return
            vcpu = dom.vcpus[0]
            lay = dom.layout
            scratch = lay.stack + 16 * PAGE
            frame = dom.mem.frame(dom.p2m[lay.pfn(scratch)])
            for i in range(calls):
                tables = [m for m in range(dom.nr_pages) if dom.frames.count[m] and dom.frames.is_table(m)]
                self._fill(rng, dom, frame, tables)
                nr = rng.choice(list(range(0, 41)) + [1, 1, 14, 26, 26, 32, 20, 29, 24, 12, 13, 3, 4, 17])
                args = [self._arg(rng, dom, scratch, tables) for _ in range(5)]
                if rng.random() < 0.6:
                    args[0] = rng.randrange(32)
                if rng.random() < 0.5:
                    args[1] = scratch + rng.choice([0, 0, 8, PAGE - 8])
                if nr in (1, 26):
                    args = [scratch, rng.randrange(1, 40), rng.choice([0, scratch + 3000]), 0x7FF0, 0]
                for reg, value in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX,
                                       X.UC_X86_REG_R10, X.UC_X86_REG_R8), [nr] + args):
                    vcpu.uc.reg_write(reg, value & U64)
                vcpu._on_syscall()
                check_domain(dom, f"after hypercall {nr}{tuple(hex(a) for a in args)}")
                if dom.finished:
                    self.outcome = f"domain {dom.state} by hypercall {nr}"
                    break
                vcpu.blocked = False
                if i % 10 == 9:
                    audit_domain(dom, f"after hypercall {nr}")
            if not dom.finished:
                audit_domain(dom, "after the hypercalls")
                start = dom.clock.now_ns()
                self.outcome = "ran on: " + dom.run(until=lambda d: d.clock.now_ns() >= start + 200_000)
                check_domain(dom, "running on after the hypercalls")
            audit_domain(dom, "at the end")
        finally:
            dom.close()

    def _arg(self, rng: random.Random, dom: Any, scratch: int, tables: list[int]) -> int:
        r = rng.random()
        if r < 0.15 and tables:
            return rng.choice(tables)
        if r < 0.25:
            return dom.layout.virt_base + PAGE * rng.randrange(64)
        if r < 0.35:
            return rng.choice([1, 2, 3, 4, 5, 6, 7, 8])          # ports, refs, small counts
        return rng.choice([boundary_int(rng), scratch + rng.randrange(PAGE), rng.getrandbits(64)])

    def _fill(self, rng: random.Random, dom: Any, frame: memoryview, tables: list[int]) -> None:
        """The scratch page: random bytes, or request arrays aimed at the domain's own tables and frames."""
        r = rng.random()
        if r < 0.3:
            frame[:] = bytes(rng.getrandbits(8) for _ in range(PAGE))
            return
        if r < 0.5:
            frame[:] = rng.getrandbits(64).to_bytes(8, "little") * (PAGE // 8)
            return
        for off in range(0, PAGE, 8):
            v = rng.random()
            if v < 0.3 and tables:
                word = (rng.choice(tables) << 12) + 8 * rng.randrange(512) + rng.choice([0, 0, 0, 1, 2])
            elif v < 0.6:
                word = (rng.randrange(dom.mem.nr_frames + 16) << 12) | rng.choice([0, 1, 3, 5, 7, 0x27, 0x67,
                                                                                  1 << 63 | 7])
            else:
                word = boundary_int(rng) & U64
            frame[off:off + 8] = word.to_bytes(8, "little")


class GdbTarget(Target):
    name = "gdb"
    LETTERS = "?gGpPmMXZzHTcsCSvqQ"

    def setup(self) -> None:
        from miniguest.debug.rsp import frame
        self.frame = frame

    def _packet(self, rng: random.Random) -> bytes:
        hexnum = lambda: rng.choice(["0", "1", "10", "ffffffff", "ffff800000000000", "7fffffffffff",  # noqa
                                      "ffffffffffffffff", "1" * 17, "", "-1", "g", " 1", f"{rng.getrandbits(64):x}",
                                      "ffffffff80000000", "ffffffff80001000"])
        c = rng.choice(self.LETTERS)
        if c in "mM":
            body = f"{c}{hexnum()},{hexnum()}"
            if c == "M":
                body += ":" + rng.choice(["", "00", "0", "zz", "00" * rng.randrange(1, 40)])
            return body.encode()
        if c == "X":
            return f"X{hexnum()},{hexnum()}:".encode() + bytes(rng.getrandbits(8) for _ in range(rng.randrange(9)))
        if c in "pP":
            return f"{c}{hexnum()}".encode() + (("=" + rng.choice(["", "00" * 8, "00" * 4, "ff" * 10, "x"])).encode()
                                                if c == "P" else b"")
        if c == "G":
            return b"G" + rng.choice([b"", b"00" * 100, b"ff" * 600, b"0"])
        if c in "Zz":
            return f"{c}{rng.choice(['0', '1', '2', '3', '4', '9'])},{hexnum()},{rng.choice(['1', '2', '4', '8', '0', 'ff'])}".encode()
        if c in "HT":
            return f"{c}{rng.choice(['g', 'c', ''])}{rng.choice(['-1', '0', '1', '2', 'p1.1', 'p1.-1', 'zz', ''])}".encode()
        if c == "v":
            return rng.choice([b"vCont?", b"vCont;c", b"vCont;s:1", b"vCont;C05", b"vCont;t", b"vCont;", b"vCont;;",
                               b"vCont;x:zz", b"vMustReplyEmpty", b"vFile:open:", b"vAttach;1", b"vRun;"])
        if c in "qQ":
            words = ["help", "hypercalls", "hypercalls 5", "hypercalls -1", "hypercalls zz", "evtchn", "domain",
                     "store ls", "store ls /local", "store read /local/domain/1/name", "store read", "store",
                     "trace on", "trace on hypercall", "trace on bogus", "trace off", "catch hypercall xen_version",
                     "catch hypercall 99", "catch hypercall -1", "catch list", "catch delete all",
                     "catch delete 5", "'unterminated", "x" * 300, "store read '/a b'"]
            q = rng.choice(["qSupported:multiprocess+", "qAttached", "qC", "qfThreadInfo", "qsThreadInfo",
                            f"qThreadExtraInfo,{hexnum()}", "qOffsets", "qSymbol::", "QStartNoAckMode",
                            f"qXfer:features:read:target.xml:{hexnum()},{hexnum()}",
                            "qXfer:features:read:bogus.xml:0,10", "qXfer:features:read:target.xml",
                            "qRcmd," + rng.choice(words).encode().hex(), "qRcmd,zz", "qRcmd,", "qTStatus"])
            return q.encode()
        return c.encode() + rng.choice([b"", hexnum().encode(), b"05;" + hexnum().encode()])

    def generate(self, rng: random.Random) -> list[bytes]:
        out = []
        for _ in range(rng.randrange(5, 40)):
            pkt = self._packet(rng)
            if rng.random() < 0.1:
                pkt = mutate_bytes(rng, pkt, 2)
            out.append(pkt)
        return out

    def run(self, packets: list[bytes]) -> None:
        from miniguest import Domain
        from miniguest.debug.gdbstub import GdbStub
        from miniguest.debug.monitor import Monitor
        from miniguest.debug.rsp import PacketReader
        dom = Domain.from_elf(SELFTEST, cmdline="hang", console_output=lambda b: None)
        problems: list[str] = []
        stub = GdbStub(dom, "127.0.0.1", 0, notify=lambda m: problems.append(m) if "internal error" in m else None)
        stub.monitor = Monitor(dom, stub.debug, stub._console)
        sent: list[bytes] = []
        stub._send = lambda payload: sent.append(payload if isinstance(payload, bytes)  # type: ignore
                                                 else payload.encode("latin-1"))
        stub._send_raw = lambda data: None  # type: ignore
        stub._drop_client = lambda: None  # type: ignore
        try:
            reader = PacketReader()
            for pkt in packets:
                for ev in reader.feed(self.frame(pkt) if pkt[:1] != b"\x03" else pkt):
                    if ev.kind == "packet":
                        stub._handle(ev.payload)
                if dom.finished:
                    break
            if problems:
                raise Finding(problems[0])
            check_domain(dom, "after gdb packets")
        finally:
            with contextlib.suppress(Exception):
                stub.monitor.close()
            with contextlib.suppress(Exception):
                stub.close()
            dom.close()


class CliTarget(Target):
    """Command lines with odd option values, run in-process (stdout/stderr captured)."""
    name = "cli"

    def setup(self) -> None:
        from miniguest import Domain
        from miniguest.debug.tracer import Tracer, header_line
        from miniguest.regress.snapshot import Snapshot
        self.tmp = tempfile.mkdtemp(prefix="fuzz-cli-")
        dom = Domain.from_elf(HELLO, console_output=lambda b: None)
        tracer = Tracer(dom).attach()
        dom.run(until=lambda d: d.clock.now_ns() >= 10_000)
        Snapshot.capture(dom).save(os.path.join(self.tmp, "s.snap"))
        dom.run()
        with open(os.path.join(self.tmp, "t.jsonl"), "w") as f:
            f.write(header_line({}) + "\n" + "".join(r.to_json() + "\n" for r in tracer.records))
        dom.close()

    def _value(self, rng: random.Random) -> str:
        return rng.choice(["0", "1", "-1", "999999999999999999999", "0x10", "", " ", "abc", "1e3", "-0",
                           os.path.join(self.tmp, "t.jsonl"), os.path.join(self.tmp, "s.snap"), self.tmp,
                           "/nonexistent/x", "/dev/null", "hello", "minios", "a" * 5000, "hypercall:xen_version:0:-22@1",
                           "xenstore:read:ENOENT@1", "event:drop:port=1@1", "hypercall", "@", "::", "-", "--"])

    def generate(self, rng: random.Random) -> list[str]:
        v = self._value
        t, s = os.path.join(self.tmp, "t.jsonl"), os.path.join(self.tmp, "s.snap")
        out = os.path.join(self.tmp, "out")
        forms = [
            ["trace", "show", rng.choice([t, v(rng)]), *rng.choice([[], ["--kind", v(rng)], ["--name", v(rng)],
                                                                    ["--json"]])],
            ["trace", "diff", rng.choice([t, v(rng)]), rng.choice([t, v(rng)]), "--context", v(rng),
             *rng.choice([[], ["--ignore", v(rng)]])],
            ["trace", "export", rng.choice([t, v(rng)]), "-o", rng.choice([out, v(rng)])],
            ["snapshot", "info", rng.choice([s, v(rng)])],
            ["snapshot", "run", rng.choice([s, v(rng)]), "--quiet", "--max-insns", rng.choice(["2000", v(rng)]),
             *rng.choice([[], ["--inject", v(rng)], ["--trace", rng.choice([out, v(rng)])],
                          ["--perfetto", rng.choice([out, v(rng)])]])],
            ["boot", rng.choice(["hello", v(rng)]), "--quiet", "--max-insns", "3000",
             *rng.choice([[], ["-m", v(rng)], ["--maxmem", v(rng)], ["-c", v(rng)], ["--name", v(rng)],
                          ["--module", v(rng)], ["--console-log", rng.choice([out, v(rng)])], ["--inject", v(rng)],
                          ["--trace", v(rng)]])],
            ["snapshot", "save", "hello", "--quiet", "--max-insns", "3000", "-o", rng.choice([out, v(rng)]),
             rng.choice(["--at-ns", "--after-hypercalls"]), v(rng)],
            ["samples"],
        ]
        argv = rng.choice(forms)
        if rng.random() < 0.1:
            argv = argv + [v(rng)]
        return argv

    def dump(self, case: Any) -> bytes:
        return json.dumps(case).encode()

    def run(self, argv: list[str]) -> None:
        from miniguest.cli.main import main
        err = io.StringIO()
        stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        with contextlib.chdir(self.tmp), contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
            try:
                code = main(list(argv))
            except SystemExit as e:
                code = e.code
        self.outcome = f"exit {code}"
        text = err.getvalue()
        if "Traceback" in text:
            raise Finding(f"traceback on stderr for {argv}:\n{text}")


TARGETS: dict[str, type[Target]] = {t.name: t for t in (ElfTarget, XlcfgTarget, SnapshotTarget, TraceTarget,
                                                          XenstoreTarget, HypercallTarget, GdbTarget, CliTarget)}


# -- running ----------------------------------------------------------------------------------------------------
def case_rng(target: str, seed: int, index: int) -> random.Random:
    return random.Random(f"{target}/{seed}/{index}")


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise Hang in this (main) thread after `seconds` of wall time."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise Hang()
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_case(target: Target, seed: int, index: int, budget: float = 0.0,
             errors: Optional[ErrorLog] = None) -> Optional[str]:
    """Run one case; None if fine, else the finding (a traceback or a message)."""
    rng = case_rng(target.name, seed, index)
    target.outcome = ""
    try:
        case = target.generate(rng)
    except Exception:
        return "fuzzer bug (generating the case):\n" + traceback.format_exc()
    try:
        with alarm(budget):
            target.run(case)
        if errors is not None:
            errors.check("during the case")
    except Hang:
        return f"hang: case took more than {budget} s"
    except Finding as f:
        return f"finding: {f}"
    except RecursionError:
        return "traceback:\n" + "".join(traceback.format_exc(limit=-12))
    except Exception:
        return "traceback:\n" + traceback.format_exc()
    return None


def signature(text: str) -> str:
    """A short key to tell findings apart: the exception line and the innermost miniguest frame."""
    lines = text.strip().splitlines()
    last = lines[-1] if lines else text
    frame = ""
    for line in lines:
        s = line.strip()
        if s.startswith("File ") and "/miniguest/" in s and "/tools/" not in s:
            frame = s.rsplit("/miniguest/", 1)[1]
    head = lines[0] if lines else ""
    if head.startswith(("finding:", "hang", "fuzzer bug")):
        if head.startswith("fuzzer bug"):
            return f"fuzzer bug: {last[:100]} @ {frame or lines[-3].strip()[:80]}"
        return head[:160]
    return f"{last[:120]} @ {frame[:100]}"


def _worker(name: str, seed: int, start: int, stop: Optional[int], budget: float, out: str,
            conn: Any) -> None:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    logging.basicConfig(level=logging.CRITICAL)
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    target = TARGETS[name]()
    target.setup()
    conn.send(("ready", start))
    i = start
    while stop is None or i < stop:
        conn.send(("start", i))
        result = run_case(target, seed, i, budget, errors)
        if result is not None:
            base = os.path.join(out, f"{name}-{seed}-{i}")
            os.makedirs(out, exist_ok=True)
            with open(base + ".txt", "w") as f:
                f.write(f"reproduce: python3 tools/fuzz.py {name} --seed {seed} --case {i}\n\n{result}\n")
            with contextlib.suppress(Exception):
                with open(base + ".input", "wb") as f:
                    f.write(target.dump(target.generate(case_rng(name, seed, i))))
        conn.send(("done", i, result, target.outcome))
        i += 1
    conn.send(("end", i))


def fuzz_target(name: str, seed: int, cases: Optional[int], minutes: Optional[float], budget: float, out: str,
                log: Callable[[str], None]) -> dict[str, Any]:
    """Run one target in a watched child process; returns {cases, findings: {signature: [indexes]}}."""
    ctx = mp.get_context("fork")
    deadline = time.monotonic() + minutes * 60 if minutes else None
    findings: dict[str, list[int]] = {}
    outcomes: dict[str, int] = {}
    ran = 0
    index = 0
    setup_grace = 300.0
    while True:
        if cases is not None and index >= cases:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(name, seed, index, cases, budget, out, child), daemon=True)
        proc.start()
        child.close()
        current = None
        waiting = setup_grace
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                proc.kill()
                break
            if not parent.poll(waiting):
                if current is None:
                    log(f"{name}: the worker did not start")
                    proc.kill()
                    return {"cases": ran, "findings": findings, "outcomes": outcomes}
                sig = f"hang: case did not finish within {budget * 3:.0f} s (killed)"
                findings.setdefault(sig, []).append(current)
                os.makedirs(out, exist_ok=True)
                with open(os.path.join(out, f"{name}-{seed}-{current}.txt"), "w") as f:
                    f.write(f"reproduce: python3 tools/fuzz.py {name} --seed {seed} --case {current}\n\n{sig}\n")
                log(f"{name} case {current}: {sig}")
                proc.kill()
                index = current + 1
                ran += 1
                break
            try:
                msg = parent.recv()
            except EOFError:
                if current is not None:
                    sig = "worker died (crash of the interpreter or of a C extension)"
                    findings.setdefault(sig, []).append(current)
                    log(f"{name} case {current}: {sig}")
                    index = current + 1
                    ran += 1
                break
            if msg[0] == "ready":
                waiting = budget * 3
            elif msg[0] == "start":
                current = msg[1]
            elif msg[0] == "done":
                ran += 1
                current = None
                if msg[3]:
                    outcomes[msg[3]] = outcomes.get(msg[3], 0) + 1
                index = msg[1] + 1
                if msg[2] is not None:
                    sig = signature(msg[2])
                    first = sig not in findings
                    findings.setdefault(sig, []).append(msg[1])
                    if first:
                        log(f"{name} case {msg[1]}: NEW {sig}")
            elif msg[0] == "end":
                index = msg[1]
                break
        proc.join(5)
        if proc.is_alive():
            proc.kill()
        parent.close()
        if cases is not None and index >= cases:
            break
    return {"cases": ran, "findings": findings, "outcomes": outcomes}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("targets", nargs="*", help=f"targets ({', '.join(TARGETS)}; default all)")
    p.add_argument("--cases", type=int, help="cases per target (default 200 unless --minutes)")
    p.add_argument("--minutes", type=float, help="run each target this long")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--budget", type=float, default=20.0, help="seconds a case may take (default 20)")
    p.add_argument("--out", default="fuzz-findings", help="where findings are written")
    p.add_argument("--case", type=int, help="reproduce this one case in-process (with --seed)")
    p.add_argument("--show", action="store_true", help="with --case: print the generated input")
    args = p.parse_args(argv)
    names = args.targets or list(TARGETS)
    for n in names:
        if n not in TARGETS:
            p.error(f"unknown target {n!r} (have {', '.join(TARGETS)})")
    if args.case is not None:
        logging.basicConfig(level=logging.ERROR)
        errors = ErrorLog()
        logging.getLogger().addHandler(errors)
        for n in names:
            t = TARGETS[n]()
            t.setup()
            if args.show:
                sys.stdout.buffer.write(t.dump(t.generate(case_rng(n, args.seed, args.case))) + b"\n")
            result = run_case(t, args.seed, args.case, args.budget, errors)
            print(f"{n} seed {args.seed} case {args.case}: {result or 'ok'}")
        return 0
    cases = args.cases if args.cases is not None or args.minutes else 200
    total_findings = 0
    report = []
    for n in names:
        t0 = time.monotonic()
        res = fuzz_target(n, args.seed, cases, args.minutes, args.budget, args.out,
                          lambda m: print(m, flush=True))
        dt = time.monotonic() - t0
        total_findings += sum(len(v) for v in res["findings"].values())
        report.append(f"{n:10} {res['cases']:7} cases in {dt:6.0f} s, {len(res['findings'])} distinct findings")
        first = len(report) - 1
        if res["outcomes"]:
            report.append("           outcomes: " + ", ".join(f"{k} {v}" for k, v in
                                                           sorted(res["outcomes"].items(), key=lambda kv: -kv[1])))
        for sig, idx in sorted(res["findings"].items()):
            report.append(f"           {len(idx):5}x {sig}   (e.g. --seed {args.seed} --case {idx[0]})")
        print("\n".join(report[first:]), flush=True)
    print("\n".join(["", "summary:"] + report))
    return 1 if total_findings else 0


if __name__ == "__main__":
    sys.exit(main())
