"""Hostile hypercall arguments, fuzzed: random numbers, sub-ops and argument values -- pointers into
random-filled guest memory, unmapped and non-canonical addresses, huge counts -- must only ever produce
an errno or a clean domain crash, never a Python exception out of a handler."""
from __future__ import annotations

import random

import pytest

from miniguest import Domain
from miniguest.hypervisor import hypercall as hypercalls
from miniguest.hypervisor.x86.page_types import PGT_l1, audit_domain
from miniguest.hypervisor.crash import GuestCrash

from guestlib import SELFTEST

pytestmark = pytest.mark.slow        # thousands of random hypercalls: seconds of CPU

PAGE = 4096
SKIP = {23}          # iret: tested on its own below (it rewrites the CPU state by design)


def interesting(rng: random.Random, scratch: int) -> int:
    return rng.choice([
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 0x7FF0, 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1, 1 << 63,
        scratch + rng.randrange(PAGE), scratch + PAGE - rng.randrange(1, 64), 0x7FF000000000,
        0xFFFF800000000000 + rng.randrange(1 << 20), 0xFFFF820000000000, rng.getrandbits(64),
        rng.getrandbits(32), rng.randrange(64),
    ])


def tables_of(dom: Domain) -> list[int]:
    return [m for m in range(dom.nr_pages) if dom.frames.count[m] and dom.frames.is_table(m)]


def path_entries(dom: Domain, va: int) -> set[tuple[int, int]]:
    """The (table mfn, index) entries at every level that map va in the current page tables."""
    out = set()
    table = dom.vcpus[0].aspace.cr3 >> 12
    for shift in (39, 30, 21, 12):
        index = (va >> shift) & 511
        out.add((table, index))
        table = (dom.mem.read_u64((table << 12) + index * 8) & 0x000FFFFFFFFFF000) >> 12
    return out


def fill_page_updates(rng: random.Random, dom: Domain, frame: memoryview, tables: list[int],
                      keep: set[tuple[int, int]]) -> None:
    """mmu_update material aimed at our own tables: real PTE addresses and frame numbers. `keep` are the
    entries that map the request page itself, left alone so that the fuzzing goes on."""
    l1s = [m for m in tables if dom.frames.type[m] == PGT_l1] or tables
    for off in range(0, PAGE, 16):
        target = rng.choice(l1s * 4 + tables + [rng.randrange(dom.nr_pages)])
        index = rng.randrange(512)
        if (target, index) in keep:
            index ^= 1
        ptr = (target << 12) + 8 * index + rng.choice([0, 0, 0, 1, 2, 3])
        val = (rng.choice(tables + [rng.randrange(dom.mem.nr_frames + 64)]) << 12) | rng.choice(
            [0, 1, 3, 5, 7, 0x27, 0x67, 0x87, 0x13, 1 << 63 | 7])
        frame[off:off + 16] = ptr.to_bytes(8, "little") + val.to_bytes(8, "little")


@pytest.mark.parametrize("seed", range(4))
def test_page_table_updates_keep_the_type_counts_consistent(seed):
    """Random mmu_update/mmuext_op/update_va_mapping batches aimed at our own page tables: whatever is
    accepted or refused, a full recount of type references must match Xen-style bookkeeping."""
    dom = Domain.from_elf(SELFTEST, cmdline="hang")
    vcpu = dom.vcpus[0]
    scratch = dom.layout.stack + 16 * PAGE
    frame = dom.mem.frame(dom.p2m[dom.layout.pfn(scratch)])
    rng = random.Random(seed)
    keep = path_entries(dom, scratch)
    for _ in range(400):
        tables = tables_of(dom)
        fill_page_updates(rng, dom, frame, tables, keep)
        nr = rng.choice([1, 1, 26, 14])
        count = rng.randrange(1, 64)
        if nr == 1:
            args = (scratch, count, 0, 0x7FF0, 0)
        elif nr == 26:
            for off in range(0, PAGE - 23, 24):   # mmuext ops: pin/unpin/baseptr on real frames
                cmd = rng.choice([0, 1, 2, 3, 4, 15, 6])     # (NEW_BASEPTR would switch to an empty L4)
                mfn = rng.choice(tables + [rng.randrange(dom.nr_pages)])
                frame[off:off + 24] = cmd.to_bytes(4, "little") + bytes(4) + mfn.to_bytes(8, "little") + bytes(8)
            args = (scratch, count, 0, 0x7FF0, 0)
        else:
            va = dom.layout.virt_base + PAGE * rng.randrange(1024)
            if va == scratch:
                va += PAGE
            val = (rng.randrange(dom.mem.nr_frames) << 12) | rng.choice([0, 5, 7])
            args = (va, val, rng.choice([0, 1, 2]), 0, 0)
        try:
            hypercalls.call(vcpu, nr, args)
        except GuestCrash:
            pass
    problems = audit_domain(dom)
    assert not problems, problems[:10]
    dom.close()


@pytest.mark.parametrize("seed", range(6))
def test_random_hypercalls_never_raise(seed):
    dom = Domain.from_elf(SELFTEST, cmdline="hang")
    vcpu = dom.vcpus[0]
    lay = dom.layout
    scratch = lay.stack + 16 * PAGE                  # a writable free page in the bootstrap mapping
    frame = dom.mem.frame(dom.p2m[lay.pfn(scratch)])   # written directly: the fuzzing may remap the VA
    rng = random.Random(seed)
    nrs = [n for n in range(64) if n not in SKIP]
    for _ in range(3000):
        frame[:] = (bytes(rng.getrandbits(8) for _ in range(PAGE)) if rng.random() < 0.2
                    else rng.getrandbits(64).to_bytes(8, "little") * (PAGE // 8))
        nr = rng.choice(nrs)
        args = tuple(interesting(rng, scratch) for _ in range(5))
        if rng.random() < 0.5:
            args = (rng.randrange(16),) + args[1:]       # plausible sub-op numbers
        if rng.random() < 0.5:
            args = args[:3] + (0x7FF0,) + args[4:]       # DOMID_SELF where a foreign domain may be named
        try:
            result = hypercalls.call(vcpu, nr, args)
        except GuestCrash:
            continue
        assert result is None or isinstance(result, int)
        if dom.finished:                                  # a shutdown: keep fuzzing the same domain
            dom.state = "running"
        vcpu.blocked = False
        assert not dom.crash_report or "internal error" not in dom.crash_report, dom.crash_report
    assert not audit_domain(dom)
    dom.close()


def test_iret_with_garbage_frames_crashes_cleanly():
    """HYPERVISOR_iret on random frames: an unreadable frame crashes the domain with a reason naming iret;
    a readable one is loaded as Xen's do_iret loads it (rip, rsp, rax, the event mask from IF)."""
    import struct
    from unicorn import x86_const as X
    rng = random.Random(7)
    crashed = loaded = 0
    for _ in range(20):
        dom = Domain.from_elf(SELFTEST, cmdline="hang")
        vcpu = dom.vcpus[0]
        sp = dom.layout.stack + 16 * 4096
        frame = bytes(rng.getrandbits(8) for _ in range(72))
        frame = frame[:40] + (struct.unpack_from("<Q", frame, 40)[0] & ~3).to_bytes(8, "little") + frame[48:]
        vcpu.mem.write(sp, frame)                      # (cs with RPL 0: no switch to user page tables)
        rsp = sp if rng.random() < 0.8 else 0x7FF000000000
        vcpu.uc.reg_write(X.UC_X86_REG_RSP, rsp)
        try:
            result = hypercalls.call(vcpu, 23, (0, 0, 0, 0, 0))
        except GuestCrash as e:
            assert "HYPERVISOR_iret" in str(e) and rsp != sp, e
            crashed += 1
        else:
            rax, r11, rcx, flags, rip, cs, rflags, new_rsp, ss = struct.unpack("<9Q", frame)
            assert result is None and rsp == sp
            assert vcpu.uc.reg_read(X.UC_X86_REG_RAX) == rax
            assert vcpu.uc.reg_read(X.UC_X86_REG_RSP) == new_rsp
            assert vcpu.upcall_mask == (0 if rflags & 0x200 else 1)
            loaded += 1
        dom.close()
    assert crashed and loaded
