"""`miniguest`: boot PV guests, list samples, talk to a running guest's xenstore.

Exit status of `miniguest boot`: how the guest ended (toolstack/exit_status.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Optional

from miniguest.toolstack.exit_status import (EXIT_BAD_IMAGE, EXIT_BUDGET, EXIT_CRASH, EXIT_ERROR, EXIT_HUNG,
                                             EXIT_INTERRUPTED, EXIT_TERMINATED, SHUTDOWN_EXIT)

MAX_RESTARTS = 16
# Feature modules that add subcommands and `boot` options. Each may define:
#   register(subparsers)                   add its own subcommands
#   add_domain_options(parser)             add options to boot (and other commands that build a domain)
#   configure_domain(domain, args)         act on those options once the domain is built
COMMAND_MODULES = ("miniguest.cli.debug_commands", "miniguest.cli.regress_commands", "miniguest.cli.initramfs")


def _feature_modules() -> list:
    import importlib
    mods = []
    for name in COMMAND_MODULES:
        try:
            mods.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise                   # a missing dependency inside the module is a real error
    return mods


def _err(msg: str) -> None:
    sys.stderr.write(f"miniguest: {msg}\n")
    sys.stderr.flush()


def _resolve_image(arg: Optional[str]) -> tuple[str, dict]:
    """IMAGE | CONFIG.cfg | SAMPLE -> (kernel path, options from a config file)."""
    from miniguest import samples
    from miniguest.toolstack.xlcfg import parse_xl_config
    arg = arg or samples.DEFAULT
    if arg.endswith(".cfg") and os.path.exists(arg):
        cfg = parse_xl_config(arg)
        if cfg.vcpus != 1:
            _err(f"warning: {arg}: vcpus={cfg.vcpus}: miniguest runs one vCPU per domain for now; "
                 "booting with vcpus=1")
        opts = {"memory_mib": cfg.memory, "maxmem": cfg.maxmem, "cmdline": cfg.cmdline, "name": cfg.name,
                "module": cfg.ramdisk,
                "on_poweroff": cfg.on_poweroff, "on_reboot": cfg.on_reboot, "on_crash": cfg.on_crash,
                "on_watchdog": cfg.on_watchdog}
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


def add_domain_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--store-socket", metavar="PATH",
                   help="serve the xenstore on a Unix socket (for xenstore-ls etc.: XENSTORED_PATH=PATH)")
    p.add_argument("--quiet", action="store_true", help="do not copy the guest console to the terminal")
    p.add_argument("--console-log", metavar="FILE", help="also write the guest console to FILE")
    p.add_argument("--stdin", action="store_true",
                   help="feed standard input to the guest console even when it is not a terminal")
    p.add_argument("--ready-file", metavar="PATH",
                   help="write PATH once the guest is about to run and the store socket (and gdb port) listen: "
                        "lines `store-socket PATH`, `gdb HOST:PORT`, `pid N`; for scripts to wait on")
    for mod in _feature_modules():
        if hasattr(mod, "add_domain_options"):
            mod.add_domain_options(p)


def build_from_args(args: argparse.Namespace, console_sinks: list):
    from miniguest.toolstack.libxl import create_domain
    kernel, opts = _resolve_image(args.image)
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

    def sink(data: bytes) -> None:
        for s in console_sinks:
            s(data)

    actions = {k: opts.pop(k) for k in list(opts) if k.startswith("on_")}
    try:
        dom = create_domain(kernel, max_instructions=args.max_insns, scramble_mfns=args.scramble_mfns,
                            realtime=args.realtime, max_time=getattr(args, "max_time", None),
                            console_output=sink, store_socket=args.store_socket, **opts)
    except OSError as e:            # the host refused a resource named on the command line (--store-socket)
        from miniguest.toolstack.xlcfg import ConfigError
        what = f"--store-socket {args.store_socket}" if args.store_socket else "cannot create the domain"
        raise ConfigError(f"{what}: {e.strerror or e}") from None
    if args.log_hypercalls:
        from miniguest.debug.hclog import HypercallLog
        dom.hypercall_observers.append(HypercallLog(sys.stderr))
    for mod in _feature_modules():
        if hasattr(mod, "configure_domain"):
            mod.configure_domain(dom, args)
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
    from miniguest.hypervisor import host as D
    from miniguest.toolstack.libelf import ImageError
    from miniguest.toolstack.xlcfg import ConfigError

    try:
        sinks, log_file = console_sinks(args)
    except OSError as e:
        _err(f"{args.console_log}: {e.strerror}")
        return EXIT_ERROR
    restarts = 0
    try:
        with Termination() as term:
            while True:
                remove_ready_file(args)
                try:
                    dom, kernel, opts, actions = build_from_args(args, sinks)
                except ImageError as e:
                    _err(str(e))
                    return EXIT_BAD_IMAGE
                except ConfigError as e:
                    _err(str(e))
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
                code = _report(dom, state, term.signalled)
                reason = dom.shutdown_reason or ""
                action = actions.get({"poweroff": "on_poweroff", "reboot": "on_reboot", "crash": "on_crash",
                                      "watchdog": "on_watchdog"}.get(reason, ""), "")
                dom.close()
                if (restart and action == "restart" and state in (D.SHUTDOWN, D.CRASHED)
                        and restarts < MAX_RESTARTS and not term.signalled):
                    restarts += 1
                    _err(f"restarting the domain ({reason}, on_{reason}=restart)")
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
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal
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
        _err(f"--ready-file {path}: {e.strerror}")
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
            from miniguest.abi.event_channel import EVTCHNSTAT_interdomain
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


def _report(dom, state: str, terminated: bool = False) -> int:
    from miniguest.hypervisor import host as D
    if dom.crash_report:
        sys.stderr.write(dom.crash_report + "\n")
    if state == D.SHUTDOWN or (state == D.CRASHED and dom.shutdown_reason == "crash" and not dom.crash_report):
        _err(f"domain {dom.name} shut down: {dom.shutdown_reason}")
        return SHUTDOWN_EXIT.get(dom.shutdown_reason or "", EXIT_CRASH)
    if state == D.CRASHED:
        return EXIT_CRASH
    if state == D.BUDGET:
        if getattr(dom, "budget_exhausted", None) == "time":
            _err(f"domain {dom.name}: virtual time limit of {dom.config.max_time_ns / 1e9:g} s reached "
                 f"(--max-time) after {dom.clock.icount} instructions")
        else:
            _err(f"domain {dom.name}: instruction budget of {dom.config.max_instructions} exhausted (--max-insns) "
                 f"at {dom.clock.now_ns() / 1e9:g} s of virtual time")
        return EXIT_BUDGET
    if state == D.HUNG:
        why = getattr(dom, "hang_reason", None) or "blocked with no timer and no event source that could wake it"
        _err(f"domain {dom.name} is hung: {why}")
        return EXIT_HUNG
    if state == D.STOPPED:
        if terminated:
            _err(f"domain {dom.name} stopped from the host (SIGTERM)")
            return EXIT_TERMINATED
        _err(f"domain {dom.name} stopped from the host")
        return EXIT_INTERRUPTED
    _err(f"domain {dom.name} ended in state {state}")
    return EXIT_ERROR


def cmd_samples(args: argparse.Namespace) -> int:
    from miniguest import samples
    for name, desc in samples.SAMPLES.items():
        print(f"{name:10} {desc}")
    return 0


def cmd_store(argv: list[str]) -> int:
    from miniguest.backends.xenstore.client import main as store_main
    return store_main(argv)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "store":
        return cmd_store(argv[1:])
    parser = argparse.ArgumentParser(prog="miniguest", description="A Xen hypervisor in Python for x86_64 PV guests.",
                                     epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_boot = sub.add_parser("boot", help="boot a guest and show its console")
    add_domain_options(p_boot)
    p_boot.set_defaults(func=cmd_boot)
    p_samples = sub.add_parser("samples", help="list the bundled sample guests")
    p_samples.set_defaults(func=cmd_samples)
    sub.add_parser("store", help="talk to a running guest's xenstore socket (see `miniguest store --help`)")
    for mod in _feature_modules():
        if hasattr(mod, "register"):
            mod.register(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
