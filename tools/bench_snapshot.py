#!/usr/bin/env python3
"""Snapshot and restore of a 32 MiB guest: how long they take, how big the file is, and how many
restore-and-run-to-shutdown loops fit in a second, against booting the same guest from scratch.

    python3 tools/bench_snapshot.py [--repeat N] [--image minios] [--cmdline ticks=1]

The guest (Mini-OS-shaped sample by default) is stopped right after its 60th hypercall -- booted, page
tables built, xenstore connected -- and snapshotted. Two memory shapes are measured: the guest as it is
(most frames never written, so not stored) and the same guest with every frame poisoned non-zero (the
worst case: all 32 MiB stored). Times are medians; the baseline is a boot from scratch to the same end.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from miniguest import Domain, samples  # noqa: E402
from miniguest.regress.snapshot import PauseAfterHypercalls  # noqa: E402
from miniguest.regress.snapshot import Snapshot  # noqa: E402


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(image: str, cmdline: str, repeat: int, poison: bool) -> dict[str, float]:
    dom = Domain.from_elf(image, cmdline=cmdline, memory_mib=32, poison_memory=poison)
    dom.hypercall_observers.append(PauseAfterHypercalls(60))
    assert dom.run() == "paused", "the guest ended before its 60th hypercall"
    snap = Snapshot.capture(dom)
    out: dict[str, float] = {}
    out["capture_ms"] = median_time(lambda: Snapshot.capture(dom), repeat) * 1e3
    data = snap.to_bytes()
    out["file_kib"] = len(data) / 1024
    out["serialize_ms"] = median_time(lambda: snap.to_bytes(), repeat) * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.snap")
        out["save_ms"] = median_time(lambda: snap.save(path), repeat) * 1e3
        out["load_ms"] = median_time(lambda: Snapshot.load(path), repeat) * 1e3
    loaded = Snapshot.from_bytes(data)
    loaded.restore().close()                              # expands the memory image once

    def restore_only() -> None:
        loaded.restore().close()

    def restore_and_run() -> None:
        d = loaded.restore()
        assert d.run() == "shutdown"
        d.close()

    def boot_and_run() -> None:
        d = Domain.from_elf(image, cmdline=cmdline, memory_mib=32, poison_memory=poison)
        assert d.run() == "shutdown"
        d.close()

    out["restore_ms"] = median_time(restore_only, repeat) * 1e3
    loop = median_time(restore_and_run, repeat)
    boot = median_time(boot_and_run, repeat)
    out["restore_run_per_s"] = 1 / loop
    out["boot_run_per_s"] = 1 / boot
    dom.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--image", default="minios")
    ap.add_argument("--cmdline", default="ticks=1")
    args = ap.parse_args()
    image = samples.path(args.image) or args.image
    print(f"snapshot benchmark: {os.path.basename(image)} (cmdline {args.cmdline!r}), 32 MiB, "
          f"stopped after 60 hypercalls, medians of {args.repeat}")
    for label, poison in (("as booted", False), ("every frame non-zero", True)):
        r = measure(image, args.cmdline, args.repeat, poison)
        print(f"\n  memory {label}:")
        print(f"    capture (in memory)            {r['capture_ms']:8.1f} ms")
        print(f"    serialize (zlib level 1)       {r['serialize_ms']:8.1f} ms   file {r['file_kib']:8.0f} KiB")
        print(f"    save to file / load and check  {r['save_ms']:8.1f} ms / {r['load_ms']:.1f} ms")
        print(f"    restore into a fresh domain    {r['restore_ms']:8.1f} ms")
        print(f"    restore + run to shutdown      {r['restore_run_per_s']:8.1f} loops/s")
        print(f"    baseline: boot + run to end    {r['boot_run_per_s']:8.1f} loops/s   "
              f"(restore is {r['restore_run_per_s'] / r['boot_run_per_s']:.2f}x the boot rate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
