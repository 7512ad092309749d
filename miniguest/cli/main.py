"""`miniguest`: boot PV guests, list samples, talk to a running guest's xenstore.

Exit status of `miniguest boot`: how the guest ended (toolstack/exit_status.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from miniguest.toolstack.exit_status import (EXIT_BAD_IMAGE, EXIT_BUDGET, EXIT_CRASH, EXIT_ERROR, EXIT_HUNG,
                                             EXIT_INTERRUPTED, SHUTDOWN_EXIT)

MAX_RESTARTS = 16
# Feature modules that add subcommands and `boot` options. Each may define:
#   register(subparsers)                   add its own subcommands
#   add_domain_options(parser)             add options to boot (and other commands that build a domain)
#   configure_domain(domain, args)         act on those options once the domain is built
COMMAND_MODULES = ("miniguest.cli.debug", "miniguest.cli.regress", "miniguest.cli.initramfs")


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


def add_domain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="?", help="kernel ELF, xl.cfg-style file, or sample name (default: hello)")
    p.add_argument("-m", "--memory", type=int, metavar="MiB", help="guest memory (default 32)")
    p.add_argument("-c", "--cmdline", help="guest command line")
    p.add_argument("--ramdisk", "--module", dest="module", metavar="FILE",
                   help="an initial ramdisk or module (start_info mod_start/mod_len; xl's ramdisk=)")
    p.add_argument("--maxmem", type=int, metavar="MiB",
                   help="the most memory the guest may balloon up to (xl maxmem; default: --memory)")
    p.add_argument("--name", help="domain name")
    p.add_argument("--max-insns", type=natural, metavar="N", help="instruction budget (exit 7 when exhausted)")
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
                            realtime=args.realtime,
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
    from miniguest.hypervisor import host as D
    from miniguest.toolstack.libelf import ImageError
    from miniguest.toolstack.xlcfg import ConfigError

    sinks = []
    if not args.quiet:
        out = sys.stdout.buffer

        def to_terminal(data: bytes) -> None:
            out.write(data)
            out.flush()
        sinks.append(to_terminal)
    log_file = None
    if args.console_log:
        try:
            log_file = open(args.console_log, "ab")
        except OSError as e:
            _err(f"{args.console_log}: {e.strerror}")
            return EXIT_ERROR
        sinks.append(lambda data: (log_file.write(data), log_file.flush()))
    restarts = 0
    try:
        while True:
            try:
                dom, kernel, opts, actions = build_from_args(args, sinks)
            except ImageError as e:
                _err(str(e))
                return EXIT_BAD_IMAGE
            except ConfigError as e:
                _err(str(e))
                return EXIT_ERROR
            detach_input = _connect_console_input(dom, args)
            try:
                state = dom.run()
            except KeyboardInterrupt:
                state = D.STOPPED
            finally:
                detach_input()
            code = _report(dom, state)
            reason = dom.shutdown_reason or ""
            action = actions.get({"poweroff": "on_poweroff", "reboot": "on_reboot", "crash": "on_crash",
                                  "watchdog": "on_watchdog"}.get(reason, ""), "")
            dom.close()
            if action == "restart" and state in (D.SHUTDOWN, D.CRASHED) and restarts < MAX_RESTARTS:
                restarts += 1
                _err(f"restarting the domain ({reason}, on_{reason}=restart)")
                continue
            return code
    finally:
        if log_file:
            log_file.close()


def _connect_console_input(dom, args: argparse.Namespace):
    """Feed what is typed on the terminal (or piped in with --stdin) into the guest's console ring, as
    `xl console` does. Returns the function that disconnects it."""
    if not (args.stdin or sys.stdin.isatty()):
        return lambda: None
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError):
        return lambda: None
    loop = dom.host.loop

    def on_input() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if data:
            dom.console_backend.feed(data)
        else:
            loop.remove_reader(fd)       # end of input: the guest may now be reported hung
    loop.add_reader(fd, on_input)
    return lambda: loop.remove_reader(fd)


def _report(dom, state: str) -> int:
    from miniguest.hypervisor import host as D
    if dom.crash_report:
        sys.stderr.write(dom.crash_report + "\n")
    if state == D.SHUTDOWN or (state == D.CRASHED and dom.shutdown_reason == "crash" and not dom.crash_report):
        _err(f"domain {dom.name} shut down: {dom.shutdown_reason}")
        return SHUTDOWN_EXIT.get(dom.shutdown_reason or "", EXIT_CRASH)
    if state == D.CRASHED:
        return EXIT_CRASH
    if state == D.BUDGET:
        _err(f"domain {dom.name}: instruction budget of {dom.config.max_instructions} exhausted")
        return EXIT_BUDGET
    if state == D.HUNG:
        _err(f"domain {dom.name} is hung: blocked with no timer and no event source that could wake it")
        return EXIT_HUNG
    if state == D.STOPPED:
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
