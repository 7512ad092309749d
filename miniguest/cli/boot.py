"""Booting a domain from the command line: what `miniguest boot` and every command that builds a domain
(`debug`, `gdb`, `trace record`, `snapshot save`) share -- the domain options and building the domain from
them, the console's destinations and input, --ready-file, Ctrl-C and SIGTERM, on_*=restart, and reporting
how the guest ended as the exit status (toolstack/exit_status.py).

Command modules (debug_commands, regress_commands, initramfs) are `Feature`s: each registers its
subcommands, may add domain options (`--trace`, `--inject`, `--symbols`) and acts on them once a domain is
built. main.py wires them.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any, Callable, Optional, Protocol, Sequence

from miniguest import samples
from miniguest.abi.event_channel import EVTCHNSTAT_interdomain
from miniguest.debug.hclog import HypercallLog
from miniguest.hypervisor import host as D
from miniguest.toolstack.exit_status import (EXIT_BAD_IMAGE, EXIT_BUDGET, EXIT_CRASH, EXIT_ERROR, EXIT_HUNG,
                                             EXIT_INTERRUPTED, EXIT_TERMINATED, SHUTDOWN_EXIT)
from miniguest.toolstack.disk import parse_cli_disk
from miniguest.toolstack.libelf import ImageError
from miniguest.toolstack.libxl import Guest, create_domain
from miniguest.toolstack.network import parse_vif_list
from miniguest.toolstack.xlcfg import ConfigError, parse_xl_config

MAX_RESTARTS = 16


def error(msg: str) -> None:
    sys.stderr.write(f"miniguest: {msg}\n")
    sys.stderr.flush()


def resolve_image(arg: Optional[str]) -> tuple[str, dict]:
    """IMAGE | CONFIG.cfg | SAMPLE -> (kernel path, options from a config file)."""
    arg = arg or samples.DEFAULT
    if arg.endswith(".cfg") and os.path.exists(arg):
        cfg = parse_xl_config(arg)
        if cfg.vcpus != 1:
            error(f"warning: {arg}: vcpus={cfg.vcpus}: miniguest runs one vCPU per domain for now; "
                 "booting with vcpus=1")
        opts = {"memory_mib": cfg.memory, "maxmem": cfg.maxmem, "cmdline": cfg.cmdline, "name": cfg.name,
                "module": cfg.ramdisk,
                "on_poweroff": cfg.on_poweroff, "on_reboot": cfg.on_reboot, "on_crash": cfg.on_crash,
                "on_watchdog": cfg.on_watchdog, "disks": cfg.disks or None}
        if "vif" in cfg.other:
            opts["vifs"] = parse_vif_list(cfg.other["vif"], arg)
        return cfg.kernel, {k: v for k, v in opts.items() if v is not None}
    if not os.path.exists(arg) and samples.path(arg):
        return samples.path(arg), {}        # type: ignore[return-value]
    return arg, {}


def natural(text: str) -> int:
    """argparse type: an integer >= 0 (a count, a budget, a time)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def seconds(text: str) -> float:
    """argparse type: a number of seconds >= 0 (decimals allowed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a time >= 0")
    return value


class Feature(Protocol):
    """A command module (structurally: a module with these three functions)."""

    def register(self, subparsers: Any, options: "DomainOptions") -> None: ...

    def add_domain_options(self, parser: argparse.ArgumentParser) -> None: ...

    def configure_domain(self, domain: Guest, args: argparse.Namespace) -> None: ...


class DomainOptions:
    """The options of every command that builds a domain -- the base ones here plus each feature's -- and
    building the domain from them."""

    def __init__(self, features: Sequence[Feature]) -> None:
        self.features = tuple(features)

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("image", nargs="?", help="kernel ELF, xl.cfg-style file, or sample name (default: hello)")
        p.add_argument("-m", "--memory", type=int, metavar="MiB", help="guest memory (default 32, or twice the kernel image when that is larger: 128 for Debian's Linux)")
        p.add_argument("-c", "--cmdline", help="guest command line")
        p.add_argument("--ramdisk", "--module", dest="module", metavar="FILE",
                       help="an initial ramdisk or module (start_info mod_start/mod_len; xl's ramdisk=)")
        p.add_argument("--maxmem", type=int, metavar="MiB",
                       help="the most memory the guest may balloon up to (xl maxmem; default: --memory)")
        p.add_argument("--name", help="domain name")
        p.add_argument("--max-insns", type=natural, metavar="N", help="instruction budget (exit 7 when exhausted)")
        p.add_argument("--max-time", type=seconds, metavar="SECONDS",
                       help="virtual time limit: an idle guest jumps ahead in time without running instructions "
                            "(exit 7 when reached)")
        p.add_argument("--scramble-mfns", action="store_true",
                       help="give the guest machine frames in a shuffled order (catches pfn/mfn confusion)")
        p.add_argument("--log-hypercalls", action="store_true", help="print every hypercall on stderr")
        p.add_argument("--realtime", action="store_true",
                       help="guest time follows the host clock (default: virtual time, reproducible runs)")
        p.add_argument("--disk", action="append", metavar="PATH[,vdev=xvda][,ro]",
                       help="a raw disk image for the guest (repeatable; vdev defaults to xvda, xvdb, ...; ro: "
                            "read-only; format=qcow2 needs qemu-img); with a config file, added to its disk=")
        p.add_argument("--store-socket", metavar="PATH",
                       help="serve the xenstore on a Unix socket (for xenstore-ls etc.: XENSTORED_PATH=PATH)")
        p.add_argument("--quiet", action="store_true", help="do not copy the guest console to the terminal")
        p.add_argument("--console-log", metavar="FILE", help="also write the guest console to FILE")
        p.add_argument("--stdin", action="store_true",
                       help="feed standard input to the guest console even when it is not a terminal")
        p.add_argument("--ready-file", metavar="PATH",
                       help="write PATH once the guest is about to run and the store socket (and gdb port) listen: "
                            "lines `store-socket PATH`, `gdb HOST:PORT`, `pid N`; for scripts to wait on")
        for feature in self.features:
            feature.add_domain_options(p)

    def build(self, args: argparse.Namespace, console_sinks: list) -> tuple[Guest, str, dict, dict]:
        """(domain, kernel path, its options, the xl.cfg on_* actions); ImageError, ConfigError."""
        kernel, opts = resolve_image(args.image)
        if args.memory is not None:
            opts["memory_mib"] = args.memory
        if args.cmdline is not None:
            opts["cmdline"] = args.cmdline
        if args.module is not None:
            opts["module"] = args.module
        if args.name is not None:
            opts["name"] = args.name
        if args.maxmem is not None:
            opts["maxmem"] = args.maxmem
        if getattr(args, "disk", None):
            disks = list(opts.get("disks") or [])
            for text in args.disk:
                spec = parse_cli_disk(text, len(disks))
                spec.target = os.path.abspath(spec.target)
                disks.append(spec)
            opts["disks"] = disks

        def sink(data: bytes) -> None:
            for s in console_sinks:
                s(data)

        actions = {k: opts.pop(k) for k in list(opts) if k.startswith("on_")}
        for feature in self.features:
            domain_options = getattr(feature, "domain_options", None)     # optional: options -> create_domain
            if domain_options is not None:
                domain_options(args, opts)
        try:
            dom = create_domain(kernel, max_instructions=args.max_insns, scramble_mfns=args.scramble_mfns,
                                realtime=args.realtime, max_time=getattr(args, "max_time", None),
                                console_output=sink, store_socket=args.store_socket, **opts)
        except OSError as e:            # the host refused a resource named on the command line (--store-socket)
            what = f"--store-socket {args.store_socket}" if args.store_socket else "cannot create the domain"
            raise ConfigError(f"{what}: {e.strerror or e}") from None
        if args.log_hypercalls:
            dom.hypercall_observers.append(HypercallLog(sys.stderr))
        for feature in self.features:
            feature.configure_domain(dom, args)
        return dom, kernel, opts, actions


def cmd_boot(args: argparse.Namespace) -> int:
    return run_guest(args)


def console_sinks(args: argparse.Namespace) -> tuple[list, Optional[Any]]:
    """The console's destinations: the terminal (unless --quiet) and --console-log FILE (opened here; the
    caller closes it). Raises OSError for a log file that cannot be opened."""
    sinks = []
    if not args.quiet:
        out = sys.stdout.buffer

        def to_terminal(data: bytes) -> None:
            try:
                out.write(data)
                out.flush()
            except (OSError, ValueError):
                pass
        sinks.append(to_terminal)
    log_file = None
    if getattr(args, "console_log", None):
        log_file = open(args.console_log, "ab")
        sinks.append(lambda data: (log_file.write(data), log_file.flush()))
    return sinks, log_file


def run_guest(args: argparse.Namespace,
              prepare: Optional[Callable[[Any, str], Callable[[Any, str], None]]] = None,
              restart: bool = True) -> int:
    """Boot and run a guest as `miniguest boot` does -- console to the terminal and --console-log, console
    input, --ready-file, Ctrl-C and SIGTERM, on_*=restart -- and return the exit status. `prepare(domain,
    kernel path)` runs before each (re)started domain runs and returns `finish(domain, state)` (trace
    record)."""

    try:
        sinks, log_file = console_sinks(args)
    except OSError as e:
        error(f"{args.console_log}: {e.strerror}")
        return EXIT_ERROR
    restarts = 0
    try:
        with Termination() as term:
            while True:
                remove_ready_file(args)
                try:
                    dom, kernel, opts, actions = args.domain_options.build(args, sinks)
                except ImageError as e:
                    error(str(e))
                    return EXIT_BAD_IMAGE
                except ConfigError as e:
                    error(str(e))
                    return EXIT_ERROR
                finish = prepare(dom, kernel) if prepare is not None else None
                console_input = ConsoleInput(dom, args)
                if not write_ready_file(args, dom):
                    console_input.detach()
                    dom.close()
                    return EXIT_ERROR
                term.domain = dom
                try:
                    state = dom.run()
                except KeyboardInterrupt:
                    state = D.STOPPED
                finally:
                    term.domain = None
                    console_input.detach()
                if finish is not None:
                    finish(dom, state)
                code = report_end(dom, state, term.signalled)
                reason = dom.shutdown_reason or ""
                action = actions.get({"poweroff": "on_poweroff", "reboot": "on_reboot", "crash": "on_crash",
                                      "watchdog": "on_watchdog"}.get(reason, ""), "")
                dom.close()
                if (restart and action == "restart" and state in (D.SHUTDOWN, D.CRASHED)
                        and restarts < MAX_RESTARTS and not term.signalled):
                    restarts += 1
                    error(f"restarting the domain ({reason}, on_{reason}=restart)")
                    continue
                return code
    finally:
        if log_file:
            log_file.close()


class Termination:
    """SIGTERM while a guest runs stops it as Ctrl-C does -- the run ends, what the console holds (an
    unfinished `grub> ` line too) is shown -- and the exit status is 143 (128 + SIGTERM). Outside a run, or
    off the main thread, SIGTERM keeps its usual meaning."""

    def __init__(self) -> None:
        self.domain: Any = None
        self.signalled = False
        self._previous: Any = None

    def __enter__(self) -> "Termination":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.signalled = True
        dom = self.domain
        if dom is None or dom.finished:
            raise SystemExit(EXIT_TERMINATED)
        dom.interrupt()


def remove_ready_file(args: argparse.Namespace) -> None:
    """A ready file left by an earlier run must not tell a script this one is ready."""
    path = getattr(args, "ready_file", None)
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def write_ready_file(args: argparse.Namespace, dom: Any, gdb: Optional[str] = None) -> bool:
    """--ready-file: written (atomically: complete when it appears) once everything the guest offers the
    host listens -- the store socket, the gdb port -- just before the guest runs. Never removed."""
    path = getattr(args, "ready_file", None)
    if not path:
        return True
    lines = []
    if getattr(args, "store_socket", None):
        lines.append(f"store-socket {args.store_socket}")
    if gdb:
        lines.append(f"gdb {gdb}")
    lines.append(f"pid {os.getpid()}")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        error(f"--ready-file {path}: {e.strerror}")
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    return True


# A guest that sits at a prompt (its output ends in an unfinished line) without writing anything for this long
# in virtual time, while no console input can come, waits forever: it is reported hung.
INPUT_WAIT_NS = 2_000_000_000


class ConsoleInput:
    """Feed what is typed on the terminal (or piped in with --stdin) into the guest's console ring, as
    `xl console` does -- and know when no input can come any more: standard input is not a terminal and not
    given with --stdin, or it reached its end. Then a guest waiting at a prompt is hung, not running: once
    its output ends in an unfinished line and for INPUT_WAIT_NS of virtual time it has written nothing and
    dom0 has notified it of nothing (store replies, disk completions; its timers do not count), with nothing
    else on the host that could talk to it (no store socket, no gdb), the run ends with exit 8 and a message
    saying so."""

    def __init__(self, dom: Any, args: argparse.Namespace) -> None:
        self.dom = dom
        self.loop = dom.host.loop
        self.fd: Optional[int] = None
        self.why_closed: Optional[str] = None
        if args.stdin or (sys.stdin is not None and sys.stdin.isatty()):
            try:
                self.fd = sys.stdin.fileno()
            except (AttributeError, OSError, ValueError):
                self.fd = None
            if self.fd is not None:
                self.loop.add_reader(self.fd, self._on_input)
            else:
                self.why_closed = "there is no standard input"
        else:
            self.why_closed = "standard input is not a terminal (--stdin feeds it)"
        console = getattr(dom, "console", None)
        self.console = console
        self.seen = console.received if console is not None else 0
        self.quiet_since = dom.clock.now_ns()
        if console is not None and dom.console_backend is not None:
            dom.hang_checks.append(self._check)
            dom.events.on_raise.append(self._on_event)

    def _on_event(self, port: int, what: str) -> None:
        """dom0 notified the guest (a store reply, a disk completion, console input): it is not just
        waiting at its prompt. Its own notifications, and its timers, do not count."""
        if what == "raise":
            p = self.dom.events.ports.get(port)
            if p is not None and p.state == EVTCHNSTAT_interdomain:
                self.quiet_since = self.dom.clock.now_ns()

    def _on_input(self) -> None:
        try:
            data = os.read(self.fd, 4096) if self.fd is not None else b""
        except OSError:
            data = b""
        if data:
            self.dom.console_backend.feed(data)
        else:
            self.detach()               # end of input: the guest may now be reported hung
            self.why_closed = "standard input has ended"
            self.quiet_since = self.dom.clock.now_ns()

    def _check(self) -> Optional[str]:
        now = self.dom.clock.now_ns()
        if self.console.received != self.seen:
            self.seen = self.console.received
            self.quiet_since = now
            return None
        if (self.why_closed is None or now - self.quiet_since < INPUT_WAIT_NS or self.loop.has_readers
                or self.dom.console_backend.input_pending()):
            return None
        prompt = self.console.unfinished_line()
        if not prompt.strip():
            return None
        text = prompt.decode("utf-8", "replace").strip()
        return (f"waiting for console input at {text[-40:]!r} for {INPUT_WAIT_NS / 1e9:g} s of virtual time, "
                f"and none can come: {self.why_closed}")

    def detach(self) -> None:
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            self.fd = None


def report_end(dom: Guest, state: str, terminated: bool = False) -> int:
    """Tell the user how the domain ended; the exit status that says it."""
    if dom.crash_report:
        sys.stderr.write(dom.crash_report + "\n")
    if state == D.SHUTDOWN or (state == D.CRASHED and dom.shutdown_reason == "crash" and not dom.crash_report):
        error(f"domain {dom.name} shut down: {dom.shutdown_reason}")
        return SHUTDOWN_EXIT.get(dom.shutdown_reason or "", EXIT_CRASH)
    if state == D.CRASHED:
        return EXIT_CRASH
    if state == D.BUDGET:
        if getattr(dom, "budget_exhausted", None) == "time":
            error(f"domain {dom.name}: virtual time limit of {dom.config.max_time_ns / 1e9:g} s reached "
                 f"(--max-time) after {dom.clock.icount} instructions")
        else:
            error(f"domain {dom.name}: instruction budget of {dom.config.max_instructions} exhausted (--max-insns) "
                 f"at {dom.clock.now_ns() / 1e9:g} s of virtual time")
        return EXIT_BUDGET
    if state == D.HUNG:
        why = getattr(dom, "hang_reason", None) or "blocked with no timer and no event source that could wake it"
        error(f"domain {dom.name} is hung: {why}")
        return EXIT_HUNG
    if state == D.STOPPED:
        if terminated:
            error(f"domain {dom.name} stopped from the host (SIGTERM)")
            return EXIT_TERMINATED
        error(f"domain {dom.name} stopped from the host")
        return EXIT_INTERRUPTED
    error(f"domain {dom.name} ended in state {state}")
    return EXIT_ERROR
