#!/usr/bin/env python3
"""miniguest benchmarks, each against a baseline measured in the same process.

  boot        hello: boot-to-shutdown wall time (build + run), median of runs
  minios      minios: boot-to-app_main and boot-to-shutdown wall time
  code        guest compute loop under miniguest vs the same machine code on bare Unicorn (ratio)
  hypercalls  no-op hypercalls (xen_version) vs a bare Unicorn `syscall` loop with a Python hook
  exceptions  int3 -> guest handler -> back, with a native iretq and with HYPERVISOR_iret
  xenstore    minios: guest-side xenbus write+read round trips through the ring

Rates use differences between a short and a long run of the same guest, so boot costs cancel out.
Numbers vary with the machine; the ratios are what to compare.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, Uc  # noqa: E402
from unicorn import x86_const as X  # noqa: E402

from miniguest import Domain  # noqa: E402
from miniguest.toolstack.symbols import Symbols  # noqa: E402

HELLO = os.path.join(ROOT, "miniguest", "samples", "hello.elf")
SELFTEST = os.path.join(ROOT, "tests", "guests", "selftest.elf")


def run_selftest(cmdline: str) -> tuple[float, int]:
    """Wall time of run() (not the build) and the instructions the guest executed."""
    dom = Domain.from_elf(SELFTEST, cmdline=cmdline)
    t = time.perf_counter()
    dom.run()
    dt = time.perf_counter() - t
    assert dom.shutdown_reason == "poweroff", dom.console.text
    icount = dom.clock.icount
    dom.close()
    return dt, icount


def delta(what: str, small: int, big: int, reps: int = 3) -> tuple[float, int]:
    """(seconds, instructions) for big - small iterations, median over reps."""
    times, insns = [], []
    for _ in range(reps):
        t1, i1 = run_selftest(f"bench {what} {small}")
        t2, i2 = run_selftest(f"bench {what} {big}")
        times.append(t2 - t1)
        insns.append(i2 - i1)
    return statistics.median(times), statistics.median(insns)


def bench_boot(reps: int) -> None:
    total, runs = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        dom = Domain.from_elf(HELLO)
        t1 = time.perf_counter()
        dom.run()
        t2 = time.perf_counter()
        assert dom.shutdown_reason == "poweroff"
        dom.close()
        total.append(t2 - t0)
        runs.append(t2 - t1)
    print(f"boot   hello boot-to-shutdown: {statistics.median(total) * 1000:.1f} ms "
          f"(build {statistics.median(total) * 1000 - statistics.median(runs) * 1000:.1f} ms, "
          f"run {statistics.median(runs) * 1000:.1f} ms), median of {reps}")


MINIOS = os.path.join(ROOT, "miniguest", "samples", "minios.elf")


def bench_minios(reps: int) -> None:
    """Wall time from Domain.from_elf() to the first line app_main prints (and to shutdown)."""
    to_main, total = [], []
    for _ in range(reps):
        seen: list[float] = []
        t0 = time.perf_counter()

        def sink(data: bytes) -> None:
            if not seen and b"main: par=" in data:
                seen.append(time.perf_counter())
        dom = Domain.from_elf(MINIOS, console_output=sink)
        dom.run()
        total.append(time.perf_counter() - t0)
        assert seen and dom.shutdown_reason == "poweroff"
        to_main.append(seen[0] - t0)
        dom.close()
    print(f"minios boot-to-app_main: {statistics.median(to_main) * 1000:.1f} ms, boot-to-shutdown "
          f"{statistics.median(total) * 1000:.1f} ms, median of {reps}")


def bench_xenstore(n: int) -> None:
    """minios `xsbench=N`: guest-side xenbus write+read round trips through the ring and our xenstored."""
    def run(count: int) -> float:
        dom = Domain.from_elf(MINIOS, cmdline=f"xsbench={count}")
        t = time.perf_counter()
        dom.run()
        dt = time.perf_counter() - t
        assert dom.shutdown_reason == "poweroff", dom.console.text[-500:]
        dom.close()
        return dt
    dts = [run(n) - run(n // 10) for _ in range(3)]
    rate = (n - n // 10) / statistics.median(dts)
    print(f"xs     guest xenstore round trips (write + read through the ring): {rate / 1e3:.1f} k/s "
          f"({2 * rate / 1e3:.1f} k requests/s)")


def bare_loop_seconds(iterations: int) -> float:
    """Run selftest's bench_loop machine code on a bare Unicorn (flat memory, no hooks)."""
    data = open(SELFTEST, "rb").read()
    syms = Symbols.from_elf(data)
    start = syms.address_of("bench_loop")
    size = next(s for a, s, n in syms._entries if n == "bench_loop")
    from elftools.elf.elffile import ELFFile
    import io
    elf = ELFFile(io.BytesIO(data))
    text = elf.get_section_by_name(".text")
    code = text.data()[start - text["sh_addr"]:start - text["sh_addr"] + size]
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    base = start & ~0xFFF
    uc.mem_map(base, 0x10000)
    uc.mem_map(0x100000, 0x10000)          # buffer + stack
    uc.mem_write(start, code)
    stop = base + 0xF000
    uc.mem_write(stop, b"\xf4")
    rsp = 0x10F000
    uc.mem_write(rsp, stop.to_bytes(8, "little"))
    uc.reg_write(X.UC_X86_REG_RSP, rsp)
    uc.reg_write(X.UC_X86_REG_RDI, iterations)
    uc.reg_write(X.UC_X86_REG_RSI, 0x100000)
    t = time.perf_counter()
    uc.emu_start(start, stop)
    return time.perf_counter() - t


def bench_code(n: int) -> None:
    dt, insns = delta("loop", n // 10, n)
    iters = n - n // 10
    per_iter = insns / iters
    guest = insns / dt
    bare_dt = statistics.median(bare_loop_seconds(iters) for _ in range(3))
    bare = iters * per_iter / bare_dt
    print(f"code   compute loop: miniguest {guest / 1e6:.0f} M insn/s, bare Unicorn {bare / 1e6:.0f} M insn/s, "
          f"ratio {guest / bare:.2f} ({per_iter:.1f} insns/iteration)")


def bare_syscall_rate(n: int) -> float:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    code = bytes.fromhex("b811000000" "0f05" "48ffc9" "75f4" "f4")   # mov eax,17; syscall; dec rcx; jnz; hlt
    uc.mem_write(0x1000, code)

    def hook(uc, _):
        uc.reg_write(X.UC_X86_REG_RAX, 0x40013)
    uc.hook_add(UC_HOOK_INSN, hook, None, 1, 0, X.UC_X86_INS_SYSCALL)
    uc.reg_write(X.UC_X86_REG_RCX, n)
    t = time.perf_counter()
    uc.emu_start(0x1000, 0x1000 + len(code) - 1)
    return n / (time.perf_counter() - t)


def bench_hypercalls(n: int) -> None:
    dt, _ = delta("hypercalls", n // 10, n)
    rate = (n - n // 10) / dt
    bare = statistics.median(bare_syscall_rate(n - n // 10) for _ in range(3))
    print(f"hcall  no-op hypercalls: miniguest {rate / 1e3:.0f} k/s ({1e6 / rate:.2f} us each), bare Unicorn "
          f"syscall hook {bare / 1e3:.0f} k/s ({1e6 / bare:.2f} us), ratio {rate / bare:.2f}")


def bench_exceptions(n: int) -> None:
    for what, label in (("int3", "native iretq"), ("int3iret", "HYPERVISOR_iret")):
        dt, _ = delta(what, n // 10, n)
        rate = (n - n // 10) / dt
        print(f"exc    int3 round trips ({label}): {rate / 1e3:.1f} k/s ({1e6 / rate:.1f} us each)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="*", default=["boot", "minios", "code", "hypercalls", "exceptions", "xenstore"])
    p.add_argument("--quick", action="store_true", help="smaller runs")
    a = p.parse_args()
    scale = 10 if a.quick else 1
    if "boot" in a.which:
        bench_boot(5)
    if "minios" in a.which and os.path.exists(MINIOS):
        bench_minios(5)
    if "code" in a.which:
        bench_code(30_000_000 // scale)
    if "hypercalls" in a.which:
        bench_hypercalls(200_000 // scale)
    if "exceptions" in a.which:
        bench_exceptions(50_000 // scale)
    if "xenstore" in a.which and os.path.exists(MINIOS):
        bench_xenstore(5000 // scale)


if __name__ == "__main__":
    main()
