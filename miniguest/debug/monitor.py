"""gdb's `monitor ...` commands (qRcmd): what the hypervisor knows that gdb cannot see.

  monitor hypercalls [N]          the last N hypercalls (default 20), from a trace ring buffer
  monitor evtchn                  the domain's event channels (port, pending/masked, vcpu, binding)
  monitor store ls [PATH]         a xenstore directory with values (default: the domain's home)
  monitor store read PATH         one xenstore value
  monitor domain                  state, memory, virtual time, start_info summary
  monitor trace on [KINDS]|off    print trace records on the gdb console as they happen
  monitor catch hypercall NAME|N  stop whenever the guest calls that hypercall (its hypercall page slot)
  monitor catch list | catch delete NAME|N|all
  monitor help
"""
from __future__ import annotations

import shlex
from collections import deque
from typing import TYPE_CHECKING, Callable, Optional

from miniguest.abi.start_info import start_info
from miniguest.backends.xenstore import XenstoreError
from miniguest.debug.tracer import TraceRecord, Tracer
from miniguest.debug.trace_printer import TraceFormatter, TraceKindsError, parse_kinds
from miniguest.hypervisor.debugger import BP_CATCH, DebugSupport
from miniguest.hypervisor.host import HYPERCALLS

if TYPE_CHECKING:
    from miniguest.toolstack.libxl import Guest

RING_SIZE = 256
HYPERCALL_SLOT = 32


class Monitor:
    """Runs monitor commands for one debug session. `emit(text)` sends live output (trace records) to gdb."""

    def __init__(self, domain: "Guest", debug: DebugSupport, emit: Callable[[str], None]) -> None:
        self.domain = domain
        self.debug = debug
        self.emit = emit
        self.formatter = TraceFormatter(domain)
        self.recent: deque[TraceRecord] = deque(maxlen=RING_SIZE)      # formatted when asked for
        self._ring = Tracer(domain, kinds={"hypercall"}, sink=self._remember, keep=False).attach()
        self._live: Optional[Tracer] = None
        self.catches: dict[int, int] = {}          # hypercall number -> slot address

    def close(self) -> None:
        self._ring.detach()
        self.trace_off()
        for nr in list(self.catches):
            self._uncatch(nr)

    def _remember(self, rec: TraceRecord) -> None:
        self.recent.append(rec)

    # -- dispatch -----------------------------------------------------------------------------------------
    def run(self, line: str) -> str:
        try:
            words = shlex.split(line)
        except ValueError as e:
            return f"monitor: {e}\n"
        if not words:
            return self.help()
        cmd, args = words[0], words[1:]
        fn = getattr(self, f"cmd_{cmd.replace('-', '_')}", None)
        if fn is None:
            return f"monitor: unknown command {cmd!r}; try `monitor help`\n"
        try:
            return fn(args)
        except (ValueError, KeyError, IndexError, OSError) as e:
            return f"monitor {cmd}: {e}\n"

    def help(self) -> str:
        return __doc__.split("\n\n", 1)[1].split('"""')[0]

    def cmd_help(self, args: list[str]) -> str:
        return self.help()

    # -- commands -----------------------------------------------------------------------------------------
    def cmd_hypercalls(self, args: list[str]) -> str:
        n = int(args[0], 0) if args else 20
        lines = [self.formatter.format(rec) for rec in list(self.recent)[-n:]] if n > 0 else []
        if not lines:
            return "no hypercalls yet\n"
        return "\n".join(lines) + "\n"

    def cmd_evtchn(self, args: list[str]) -> str:
        lines = self.domain.events.describe()
        head = "port flags vcpu binding   (P pending, M masked)"
        return head + "\n" + ("\n".join(lines) if lines else "(no ports)") + "\n"

    def cmd_store(self, args: list[str]) -> str:
        store = self.domain.store
        if store is None:
            return "this domain has no xenstore\n"
        home = f"/local/domain/{self.domain.domid}"
        if not args or args[0] not in ("ls", "read"):
            return "usage: monitor store ls [PATH] | monitor store read PATH\n"
        path = args[1] if len(args) > 1 else home
        if not path.startswith("/") and not path.startswith("@"):
            path = f"{home}/{path}"
        try:
            if args[0] == "read":
                return _printable(store.read(path)) + "\n"
            out = []
            for name in store.ls(path):
                child = path.rstrip("/") + "/" + name
                try:
                    value = _printable(store.read(child))
                except XenstoreError:
                    value = "?"
                sub = store.ls(child)
                out.append(f"{name} = \"{value}\"" + (f"  ({len(sub)} children)" if sub else ""))
            return "\n".join(out) + "\n" if out else f"{path}: empty\n"
        except XenstoreError as e:
            return f"{path}: {e}\n"

    def cmd_domain(self, args: list[str]) -> str:
        d = self.domain
        lines = [f"domain d{d.domid} ({d.name}) state {d.state}",
                 f"  memory {d.nr_pages * 4 // 1024} MiB ({d.nr_pages} pages), {len(d.vcpus)} vcpu(s)",
                 f"  virtual time {d.clock.now_ns()} ns ({d.clock.icount} instructions, "
                 f"{d.clock.idle_ns} ns idle)"]
        img = d.image
        if img is not None:
            hp = img.notes.hypercall_page
            lines.append(f"  entry {self.formatter.where(img.entry)} ({img.entry:#x}), hypercall page "
                         + (f"{hp:#x}" if hp is not None else "none"))
        lines.extend(self._start_info())
        for v in d.vcpus:
            state = "blocked" if v.blocked else "runnable"
            lines.append(f"  vcpu{v.id}: {state}, guest {'kernel' if v.kernel_mode else 'user'} mode, "
                         f"rip {self.formatter.where(v.rip)}, upcall_mask {v.upcall_mask} "
                         f"pending {v.upcall_pending}")
        if d.shutdown_reason:
            lines.append(f"  shutdown reason: {d.shutdown_reason}")
        return "\n".join(lines) + "\n"

    def _start_info(self) -> list[str]:
        d = self.domain
        if not d.start_info_va or not d.vcpus:
            return []
        try:
            si = d.vcpus[0].aspace.read_struct(d.start_info_va, start_info)
        except Exception:
            return [f"  start_info at {d.start_info_va:#x} (not readable now)"]
        cmdline = si.cmd_line.decode("latin-1")         # c_char arrays stop at the first NUL
        magic = si.magic.decode("latin-1")
        return [f"  start_info at {d.start_info_va:#x}: magic {magic}, "
                f"nr_pages {si.nr_pages}, flags {si.flags:#x}",
                f"    store mfn {si.store_mfn:#x} port {si.store_evtchn}, console mfn {si.console_mfn:#x} "
                f"port {si.console_evtchn}",
                f"    pt_base {si.pt_base:#x} ({si.nr_pt_frames} frames), mfn_list {si.mfn_list:#x}, "
                f"module {si.mod_start:#x}+{si.mod_len:#x}",
                f"    cmdline {cmdline!r}"]

    def cmd_trace(self, args: list[str]) -> str:
        if not args or args[0] not in ("on", "off"):
            return "usage: monitor trace on [KINDS] | monitor trace off\n"
        if args[0] == "off":
            self.trace_off()
            return "tracing off\n"
        try:
            kinds = parse_kinds(args[1] if len(args) > 1 else "all")
        except TraceKindsError as e:
            return f"{e}\n"
        self.trace_off()
        self._live = Tracer(self.domain, kinds=kinds, sink=self._print_live, keep=False).attach()
        return f"tracing {', '.join(sorted(kinds))}\n"

    def trace_off(self) -> None:
        if self._live is not None:
            self._live.detach()
            self._live = None

    def _print_live(self, rec: TraceRecord) -> None:
        self.emit(self.formatter.format(rec) + "\n")

    def cmd_catch(self, args: list[str]) -> str:
        if args[:1] == ["list"] or not args:
            if not self.catches:
                return "no hypercall catchpoints\n"
            return "".join(f"catch hypercall {_hc_name(nr)} ({nr}) at {addr:#x}\n"
                           for nr, addr in sorted(self.catches.items()))
        if args[0] == "delete" and len(args) == 2:
            targets = list(self.catches) if args[1] == "all" else [_hc_number(args[1])]
            for nr in targets:
                self._uncatch(nr)
            return f"deleted {len(targets)} catchpoint(s)\n"
        if args[0] != "hypercall" or len(args) != 2:
            return "usage: monitor catch hypercall NAME|NUMBER | catch list | catch delete NAME|NUMBER|all\n"
        nr = _hc_number(args[1])
        page = self.domain.image.notes.hypercall_page if self.domain.image else None
        if page is None:
            return "this guest has no hypercall page\n"
        addr = page + HYPERCALL_SLOT * nr
        self.debug.insert_breakpoint(addr, BP_CATCH, label=f"hypercall {_hc_name(nr)}")
        self.catches[nr] = addr
        return f"catchpoint: hypercall {_hc_name(nr)} ({nr}), at its hypercall page slot {addr:#x}\n"

    def _uncatch(self, nr: int) -> None:
        addr = self.catches.pop(nr, None)
        if addr is not None:
            self.debug.remove_breakpoint(addr, BP_CATCH)


def _hc_number(text: str) -> int:
    for hc in HYPERCALLS:
        if hc.name == text or f"HYPERVISOR_{hc.name}" == text or hc.name.lower() == text.lower():
            return hc.nr
    try:
        nr = int(text, 0)
    except ValueError:
        raise ValueError(f"unknown hypercall {text!r}") from None
    if not 0 <= nr < 4096 // HYPERCALL_SLOT:
        raise ValueError(f"hypercall number {nr} out of range")
    return nr


def _hc_name(nr: int) -> str:
    hc = HYPERCALLS.get(nr)
    return hc.name if hc is not None else str(nr)


def _printable(value: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b != 0x5C else f"\\x{b:02x}" for b in value)
