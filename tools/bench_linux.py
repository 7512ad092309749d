#!/usr/bin/env python3
"""Boot Debian's Linux cloud kernel to its busybox shell prompt and say where the work goes.

    python3 tools/bench_linux.py [--kernel vmlinuz] [--initrd initrd.cpio] [-m MiB] [--profile out.txt]

Without --kernel/--initrd the newest linux-image-6.1.0-NN-cloud-amd64 and busybox-static are fetched with
apt-get into $MINIGUEST_CACHE (~/.cache/miniguest) and the initramfs is built as the tests build it.

Reported, to the shell prompt: guest instructions, virtual seconds, wall and CPU seconds, hypercalls by name
(and sub-op), exceptions by vector, page-table updates (mmu_update entries, update_va_mapping, mmuext ops,
writable-page-table emulations), and the guest's speed against bare Unicorn running a loop in the same
process (the ceiling: the ratio is what to compare between machines). --profile writes a cProfile summary.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc  # noqa: E402

from miniguest import Domain  # noqa: E402
from miniguest.abi.xen import HYPERCALL_NAMES  # noqa: E402

PROMPT = b"/ # "
MMU_UPDATE, UPDATE_VA_MAPPING, MMUEXT_OP, MULTICALL = 1, 14, 26, 13


def fetch() -> tuple[str, str]:
    from miniguest.toolstack import debian
    from miniguest.toolstack.initramfs import KernelModules, build, busybox_binary
    pkg = debian.newest_package(r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$")
    if pkg is None:
        sys.exit("bench_linux: apt knows no linux-image-6.1.0-*-cloud-amd64 (give --kernel and --initrd)")
    root = debian.unpack(debian.download(pkg))
    release = pkg[len("linux-image-"):]
    bb = debian.unpack(debian.download("busybox-static"))
    data, _ = build(busybox_binary(bb), KernelModules.find(root, release), ["xen-blkfront", "xen-netfront"])
    initrd = os.path.join(debian.cache_dir(), f"initrd-{release}.cpio")
    with open(initrd, "wb") as f:
        f.write(data)
    return os.path.join(root, "boot", f"vmlinuz-{release}"), initrd


class Counter:
    """Hypercall observer and trace sink: counts without keeping records."""

    def __init__(self) -> None:
        self.hypercalls: collections.Counter = collections.Counter()
        self.exceptions: collections.Counter = collections.Counter()
        self.pt_updates: collections.Counter = collections.Counter()

    def before(self, vcpu, nr: int, args: tuple) -> None:
        pass

    def after(self, vcpu, nr: int, args: tuple, result) -> None:
        from miniguest.hypervisor.hypercall import TABLE
        hc = TABLE.get(nr)
        name = HYPERCALL_NAMES.get(nr, str(nr))
        sub = hc.subop_name(args) if hc is not None else None
        self.hypercalls[f"{name}({sub})" if sub else name] += 1
        if nr == MMU_UPDATE:
            self.pt_updates["mmu_update entries"] += args[1] & 0xFFFFFFFF
        elif nr == UPDATE_VA_MAPPING:
            self.pt_updates["update_va_mapping"] += 1
        elif nr == MMUEXT_OP:
            self.pt_updates["mmuext_op ops"] += args[1] & 0xFFFFFFFF

    def sink(self, kind: str, fields: dict) -> None:
        if kind == "exception":
            self.exceptions[fields.get("vector")] += 1
        elif kind == "ptwr":
            self.pt_updates["writable page-table writes"] += 1


def ceiling(n: int = 40_000_000) -> float:
    """Bare Unicorn, same process: a loop of register and memory instructions (M instructions / CPU s)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    # loop: add rax, 1; mov [rsp+8], rax; mov rbx, [rsp+8]; dec rcx; jnz loop
    code = bytes.fromhex("4883c001" "4889442408" "488b5c2408" "48ffc9" "75ee")
    uc.mem_write(0x1000, code)
    from unicorn import x86_const as X
    uc.reg_write(X.UC_X86_REG_RSP, 0x8000)
    uc.reg_write(X.UC_X86_REG_RCX, n // 5)
    t = time.process_time()
    uc.emu_start(0x1000, 0x1000 + len(code))
    return n / (time.process_time() - t) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel")
    ap.add_argument("--initrd")
    ap.add_argument("-m", "--memory", type=int)
    ap.add_argument("-c", "--cmdline", default="console=hvc0")
    ap.add_argument("--max-insns", type=float, default=2e10)
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile summary (slows the run)")
    args = ap.parse_args()
    kernel, initrd = (args.kernel, args.initrd) if args.kernel and args.initrd else fetch()
    out = bytearray()
    counter = Counter()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    opts = {} if args.memory is None else {"memory_mib": args.memory}
    dom = Domain.from_elf(kernel, module=initrd, cmdline=args.cmdline, console_output=out.extend,
                          max_instructions=int(args.max_insns), **opts)
    build_s = time.perf_counter() - wall0
    dom.hypercall_observers.append(counter)
    dom.trace_sinks.append(counter.sink)
    marks: dict[str, tuple[float, int]] = {}

    def until(d) -> bool:
        if "init" not in marks and b"Run /init" in out:
            marks["init"] = (time.perf_counter() - wall0, d.clock.now_ns())
        return PROMPT in out

    profiler = None
    if args.profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    state = dom.run(until=until)
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    reached = PROMPT in out
    icount = dom.clock.icount
    virt = dom.clock.now_ns() / 1e9
    print(f"kernel {os.path.basename(kernel)}, {dom.nr_pages // 256} MiB, cmdline {args.cmdline!r}")
    print(f"{'reached the shell prompt' if reached else 'did NOT reach the prompt: ' + state}")
    if "init" in marks:
        print(f"  'Run /init' at {marks['init'][0]:.1f} s wall, {marks['init'][1] / 1e9:.3f} s virtual")
    print(f"  wall {wall:.1f} s (build {build_s:.1f} s), CPU {cpu:.1f} s, virtual {virt:.3f} s")
    print(f"  guest instructions {icount:,} ({icount / 1e6 / max(cpu, 1e-9):.1f} M/CPU s; idle virtual time "
          f"{dom.clock.idle_ns / 1e9:.3f} s)")
    top = ceiling()
    print(f"  bare Unicorn loop in this process: {top:.0f} M/CPU s -> guest at "
          f"{icount / 1e6 / max(cpu, 1e-9) / top:.3f} of the ceiling")
    total = sum(counter.hypercalls.values())
    print(f"hypercalls: {total:,}")
    for name, n in counter.hypercalls.most_common(25):
        print(f"  {n:9,}  {name}")
    print(f"exceptions: {sum(counter.exceptions.values()):,}")
    for vec, n in counter.exceptions.most_common():
        print(f"  {n:9,}  vector {vec}")
    print("page-table updates:")
    for name, n in counter.pt_updates.most_common():
        print(f"  {n:9,}  {name}")
    if not reached:
        print(bytes(out[-1500:]).decode("latin-1"))
    if profiler is not None:
        import io
        import pstats
        s = io.StringIO()
        pstats.Stats(profiler, stream=s).sort_stats("cumulative").print_stats(40)
        pstats.Stats(profiler, stream=s).sort_stats("tottime").print_stats(30)
        with open(args.profile, "w") as f:
            f.write(s.getvalue())
        print(f"profile: {args.profile}")
    dom.close()
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
