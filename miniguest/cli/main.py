"""`miniguest`: boot PV guests, list samples, talk to a running guest's xenstore; the command modules add
debugging (debug_commands.py), traces and snapshots (regress_commands.py) and initramfs building; booting
itself is cli/boot.py.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from miniguest import samples
from miniguest.backends.xenstore.client import main as store_main
from miniguest.cli import debug_commands, initramfs, net, regress_commands
from miniguest.cli.boot import DomainOptions, Feature, cmd_boot
from miniguest.toolstack import exit_status
from miniguest.toolstack.exit_status import EXIT_ERROR, EXIT_INTERRUPTED

FEATURES: tuple[Feature, ...] = (debug_commands, regress_commands, initramfs, net)


def cmd_samples(args: argparse.Namespace) -> int:
    for name, desc in samples.SAMPLES.items():
        print(f"{name:10} {desc}")
    return 0


def cmd_store(argv: list[str]) -> int:
    return store_main(argv)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "store":
        return cmd_store(argv[1:])
    parser = argparse.ArgumentParser(prog="miniguest", description="A Xen hypervisor in Python for x86_64 PV guests.",
                                     epilog="Exit status of `miniguest boot` (how the guest ended):\n"
                                     + exit_status.__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    options = DomainOptions(FEATURES)
    p_boot = sub.add_parser("boot", help="boot a guest and show its console")
    options.add(p_boot)
    p_boot.set_defaults(func=cmd_boot, domain_options=options)
    p_samples = sub.add_parser("samples", help="list the bundled sample guests")
    p_samples.set_defaults(func=cmd_samples)
    sub.add_parser("store", help="talk to a running guest's xenstore socket (see `miniguest store --help`)")
    for feature in FEATURES:
        feature.register(sub, options)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
