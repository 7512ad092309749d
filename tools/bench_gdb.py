#!/usr/bin/env python3
"""gdb stub benchmarks, each against a baseline measured in the same run.

  steps    single-steps per second: DebugSupport.resume(step) alone, and round trips through the stub
           (`miniguest debug` in its own process) with a Python RSP client: `vCont;s` -> stop reply, as
           gdb's stepi does with the expedited registers; and the same plus a `g` packet
  code     the selftest compute loop with 10 breakpoints set away from the hot path, and with a watchpoint,
           vs no debugger hooks at all (ratio: 1.00 means no cost)

Numbers vary with the machine; the ratios are what to compare.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from miniguest import Domain  # noqa: E402
from miniguest.debug.rsp import RspClient  # noqa: E402
from miniguest.hypervisor.debugger import DebugSupport  # noqa: E402

SELFTEST = os.path.join(ROOT, "tests", "guests", "selftest.elf")
# Functions the compute-loop scenario never calls after bench_loop starts: where the 10 breakpoints go.
COLD = ["run_layout", "run_mmu", "run_badptr", "expect", "bss_probe", "hv_printf", "printk", "strtoul",
        "vsnprintf", "console_ring_init", "memcpy", "memset", "strncmp", "strchr"]


def _stop_at(d: Domain, dbg: DebugSupport, name: str) -> None:
    addr = d.symbols.address_of(name)
    dbg.insert_breakpoint(addr)
    ev = dbg.resume(step=False)
    assert ev is not None and ev.reason == "breakpoint", ev
    dbg.remove_breakpoint(addr)


def bench_steps_direct(n: int) -> float:
    d = Domain.from_elf(SELFTEST, cmdline="bench loop 100000000")
    dbg = DebugSupport(d)
    dbg.run_to_entry()
    _stop_at(d, dbg, "bench_loop")
    t = time.perf_counter()
    for _ in range(n):
        dbg.resume(step=True)
    dt = time.perf_counter() - t
    d.close()
    return n / dt


def bench_steps_rsp(n: int, with_g: bool) -> float:
    """stepi round trips with the stub in its own process (`miniguest debug`), as gdb would talk to it."""
    proc = subprocess.Popen([sys.executable, "-m", "miniguest.cli", "debug", SELFTEST, "--gdb", "127.0.0.1:0",
                             "--quiet", "--cmdline", "bench loop 100000000"], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:
            m = re.search(r"waiting for gdb on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port is not None, "the stub did not start"
        c = RspClient("127.0.0.1", port)
        c.start_no_ack()
        addr = _symbol("bench_loop")
        c.request(f"Z0,{addr:x},1")
        c.request("c")
        c.request(f"z0,{addr:x},1")
        t = time.perf_counter()
        for _ in range(n):
            reply = c.request("vCont;s:1;c")
            assert reply.startswith(b"T05"), reply
            if with_g:
                c.request("g")
        dt = time.perf_counter() - t
        c.send("k")
        c.close()
        proc.wait(30)
        return n / dt
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _symbol(name: str) -> int:
    from miniguest.toolstack.symbols import Symbols
    with open(SELFTEST, "rb") as f:
        addr = Symbols.from_elf(f.read()).address_of(name)
    assert addr is not None
    return addr


def time_loop(iterations: int, breakpoints: int, watch: bool) -> float:
    """Seconds from bench_loop's entry to the end of the guest, with debugger hooks set (or not)."""
    d = Domain.from_elf(SELFTEST, cmdline=f"bench loop {iterations}")
    dbg = DebugSupport(d)
    dbg.run_to_entry()
    _stop_at(d, dbg, "bench_loop")
    cold = [d.symbols.address_of(n) for n in COLD if d.symbols.address_of(n) is not None][:breakpoints]
    assert len(cold) == breakpoints, "not enough cold functions for the breakpoints"
    for a in cold:
        dbg.insert_breakpoint(a)
    if watch:
        dbg.insert_watchpoint("watch", d.symbols.address_of("failures"), 4)
    t = time.perf_counter()
    ev = dbg.resume(step=False)
    dt = time.perf_counter() - t
    assert ev is None or ev.reason == "breakpoint", ev   # printk after the loop may hit a breakpoint
    d.close()
    return dt


def bench_code(iterations: int, reps: int) -> None:
    """Configurations alternate within each round so machine noise hits them alike; medians per config."""
    configs = (("none", 0, False), ("10 breakpoints", 10, False), ("1 watchpoint", 0, True))
    times: dict[str, list[float]] = {label: [] for label, _, _ in configs}
    for _ in range(reps):
        for label, bps, watch in configs:
            times[label].append(time_loop(iterations, bps, watch))
    base = statistics.median(times["none"])
    insns = iterations * 16
    for label, _, _ in configs:
        dt = statistics.median(times[label])
        print(f"code   compute loop, {label:>14}: {insns / dt / 1e6:6.0f} M insn/s, "
              f"ratio {base / dt:.2f} vs none (median of {reps})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", help="steps, code (default: both)")
    ap.add_argument("--quick", action="store_true", help="smaller runs")
    args = ap.parse_args()
    args.what = args.what or ["steps", "code"]
    for w in args.what:
        if w not in ("steps", "code"):
            ap.error(f"unknown benchmark {w!r}")
    scale = 10 if args.quick else 1
    if "steps" in args.what:
        n = 20000 // scale
        direct = max(bench_steps_direct(n) for _ in range(3))        # best of 3: the machine is shared
        rsp = max(bench_steps_rsp(n // 4, with_g=False) for _ in range(3))
        rsp_g = max(bench_steps_rsp(n // 4, with_g=True) for _ in range(3))
        print(f"steps  single-step: DebugSupport alone {direct / 1000:.1f} k/s; through the stub (RSP round trip) "
              f"{rsp / 1000:.1f} k/s, with a g packet each {rsp_g / 1000:.1f} k/s (best of 3)")
    if "code" in args.what:
        bench_code(20_000_000 // scale, 5)


if __name__ == "__main__":
    main()
