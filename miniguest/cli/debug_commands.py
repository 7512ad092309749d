"""`miniguest debug`, `miniguest gdb` and the `--trace KINDS` boot option (a cli feature module).

    miniguest debug IMAGE [--gdb HOST:PORT]    stop before the first instruction, wait for gdb (default
                                               127.0.0.1:1234; port 0 picks a free one), like qemu -s -S
    miniguest gdb IMAGE [--gdb HOST:PORT]      the same, and start gdb already connected with the ELF's
                                               symbols (gdb -ex 'target remote ...' IMAGE)
    miniguest boot IMAGE --trace exceptions,hypercalls,events   (or `all`): a readable trace on stderr

Every `boot` option applies to debug and gdb; they exit like boot, with the guest's status.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import threading
from typing import Any, Optional, Union

from miniguest.cli.boot import ConsoleInput, DomainOptions, remove_ready_file, report_end, write_ready_file
from miniguest.cli.boot import error as _err
from miniguest.debug.gdbstub import GdbStub, parse_address
from miniguest.debug.trace_printer import TraceKindsError, attach_printer, parse_kinds
from miniguest.hypervisor import host as D
from miniguest.toolstack.exit_status import EXIT_BAD_IMAGE, EXIT_ERROR
from miniguest.toolstack.libelf import ImageError
from miniguest.toolstack.libxl import Guest
from miniguest.toolstack.symbols import Symbols
from miniguest.toolstack.xlcfg import ConfigError

DEFAULT_GDB_ADDRESS = "127.0.0.1:1234"


def _kinds(text: str) -> frozenset[str]:
    try:
        return parse_kinds(text)
    except TraceKindsError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_domain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbols", metavar="ELF",
                        help="the kernel's symbols from another file: for a bzImage (whose vmlinux is "
                             "stripped), the vmlinux of Debian's -dbg package; used for crash reports, traces "
                             "and by `miniguest gdb`")
    parser.add_argument("--trace", type=_kinds, metavar="KINDS",
                        help="print a readable trace on stderr: comma-separated hypercalls, exceptions, "
                             "events, upcalls, timers, privops, console, idle, shutdown, crash, log, or all")


def configure_domain(domain: Guest, args: argparse.Namespace) -> None:
    symbols = getattr(args, "symbols", None)
    if symbols:
        try:
            domain.symbols = Symbols.from_file(symbols)
        except OSError as e:
            raise ImageError(f"{symbols}: {e.strerror}") from None
        except ValueError as e:
            raise ImageError(str(e)) from None
    kinds = getattr(args, "trace", None)
    if kinds:
        attach_printer(domain, kinds, sys.stderr)


def register(subparsers: Any, options: DomainOptions) -> None:
    for name, helptext, func in (
            ("debug", "boot a guest stopped before its first instruction and wait for gdb", cmd_debug),
            ("gdb", "boot a guest under gdb (the stub plus the system gdb, already connected)", cmd_gdb)):
        p = subparsers.add_parser(name, help=helptext, description=helptext)
        options.add(p)
        p.add_argument("--gdb", type=_address, metavar="HOST:PORT", dest="gdb_address",
                       default=None if name == "gdb" else DEFAULT_GDB_ADDRESS,
                       help="where the gdb stub listens (default "
                            + ("a free port on 127.0.0.1" if name == "gdb" else DEFAULT_GDB_ADDRESS) + ")")
        if name == "gdb":
            p.add_argument("--gdb-binary", default="gdb", metavar="PATH", help="the gdb to run (default gdb)")
            p.add_argument("--gdb-arg", action="append", default=[], metavar="ARG",
                           help="extra argument for gdb (repeatable), e.g. --gdb-arg=-ex=break start_kernel")
        p.set_defaults(func=func, domain_options=options)


def _console_sinks(args: argparse.Namespace) -> tuple[list, Optional[Any]]:
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
    if args.console_log:
        log_file = open(args.console_log, "ab")
        sinks.append(lambda data: (log_file.write(data), log_file.flush()))
    return sinks, log_file


def _build(args: argparse.Namespace, sinks: list) -> Union[int, tuple[Guest, str]]:
    """Build the domain like `boot` does. Returns (domain, kernel path) or an exit status."""
    try:
        dom, kernel, _, _ = args.domain_options.build(args, sinks)
    except ImageError as e:
        _err(str(e))
        return EXIT_BAD_IMAGE
    except ConfigError as e:
        _err(str(e))
        return EXIT_ERROR
    return dom, kernel


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _session(args: argparse.Namespace, launch_gdb: bool) -> int:
    try:
        sinks, log_file = _console_sinks(args)
    except OSError as e:
        _err(f"{args.console_log}: {e.strerror}")
        return EXIT_ERROR
    try:
        remove_ready_file(args)
        built = _build(args, sinks)
        if isinstance(built, int):
            return built
        dom, kernel = built
        address = args.gdb_address or ("127.0.0.1", 0)
        host, port = _address(address) if isinstance(address, str) else address
        try:
            stub = GdbStub(dom, host, port, reattach=not launch_gdb, notify=_err)
        except OSError as e:
            _err(f"cannot listen on {host}:{port}: {e.strerror or e}")
            dom.close()
            return EXIT_ERROR
        where = f"{stub.address[0]}:{stub.address[1]}"
        if not _is_loopback(stub.address[0]):
            _err(f"warning: the gdb stub listens on {where}, beyond this machine: whoever connects has full "
                 "control of the guest (use 127.0.0.1)")
        gdb_proc = None
        detach_input = lambda: None         # noqa: E731
        if not write_ready_file(args, dom, gdb=where):
            stub.close()
            dom.close()
            return EXIT_ERROR
        if launch_gdb:
            gdb_proc = _start_gdb(args, kernel, where)
            if gdb_proc is None:
                stub.close()
                dom.close()
                return EXIT_ERROR
            # While gdb runs, Ctrl-C on the terminal is gdb's: it sends 0x03 and the stub stops the guest.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            _watch_gdb(gdb_proc, stub, previous)
        else:
            _err(f"waiting for gdb on {where}: gdb -ex 'target remote {where}' {kernel}")
            detach_input = ConsoleInput(dom, args).detach
        try:
            state = stub.serve()
        except KeyboardInterrupt:
            state = D.STOPPED
            dom.state = D.STOPPED
        finally:
            detach_input()
            if gdb_proc is not None:
                gdb_proc.wait()                 # the guest ended first: gdb stays until the user quits it
                signal.signal(signal.SIGINT, previous)
        code = report_end(dom, state)
        dom.close()
        return code
    finally:
        if log_file is not None:
            log_file.close()


def _start_gdb(args: argparse.Namespace, kernel: str, where: str) -> Optional[subprocess.Popen]:
    gdb = shutil.which(args.gdb_binary)
    if gdb is None:
        _err(f"{args.gdb_binary}: not found (install gdb, or use `miniguest debug` and your own gdb)")
        return None
    cmd = [gdb, "-q"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    checkout = os.path.dirname(root)
    if os.path.isdir(os.path.join(checkout, "firmware")):
        cmd += ["-ex", f"directory {checkout}"]      # debug info names sources firmware/... from there
    symbols = getattr(args, "symbols", None) or kernel
    try:
        with open(symbols, "rb") as f:
            is_elf = f.read(4) == b"\x7fELF"
    except OSError:
        is_elf = False
    if not is_elf:
        _err(f"{symbols} is not an ELF file gdb can read symbols from (a bzImage? give --symbols vmlinux from "
             "the kernel's -dbg package)")
        cmd += ["-ex", f"target remote {where}", *args.gdb_arg]
    else:
        cmd += ["-ex", f"target remote {where}", *args.gdb_arg, symbols]
    try:
        return subprocess.Popen(cmd)
    except OSError as e:
        _err(f"cannot run {gdb}: {e.strerror or e}")
        return None


def _watch_gdb(proc: subprocess.Popen, stub, sigint_handler) -> None:
    """When gdb exits: give Ctrl-C back to miniguest (a detached guest may run on), and end the session if
    gdb never connected instead of waiting for it forever. Signal handlers are set on the main thread,
    which is the domain's: hand the work to its loop."""

    def on_main_thread() -> None:
        # Python's default handler would raise KeyboardInterrupt inside whatever hook runs; on_sigint asks
        # the running domain to stop instead (and is Python's default when none runs).
        signal.signal(signal.SIGINT, D.on_sigint if sigint_handler is signal.default_int_handler
                      else sigint_handler)
        if stub.epoch == 0:
            stub.kill()
        elif not stub.domain.finished:
            _err("gdb has exited; the guest runs on (Ctrl-C stops it)")

    def wait() -> None:
        proc.wait()
        if not stub.loop.closed:
            stub.loop.call_soon(on_main_thread)
    threading.Thread(target=wait, name="gdb-watch", daemon=True).start()


def cmd_debug(args: argparse.Namespace) -> int:
    return _session(args, launch_gdb=False)


def cmd_gdb(args: argparse.Namespace) -> int:
    return _session(args, launch_gdb=True)
