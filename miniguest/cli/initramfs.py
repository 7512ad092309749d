"""`miniguest initramfs OUT.cpio`: a busybox initramfs for a Linux PV guest (a cli feature module).

    miniguest initramfs initrd.cpio --busybox busybox-static_*.deb
    miniguest initramfs initrd.cpio --fetch                      # apt-get download busybox-static
    miniguest initramfs initrd.cpio --fetch --kernel-modules linux-image-6.1.0-NN-cloud-amd64_*.deb
                                    [--add-module NAME ...] [--script FILE]

The archive (newc cpio) holds busybox-static, an /init that mounts proc, sys and devtmpfs, loads the
modules (xen-blkfront and xen-netfront by default when --kernel-modules is given, with what they depend
on), runs the script if given, then starts a shell on the console. Boot it with
`miniguest boot vmlinuz-... --ramdisk initrd.cpio -c console=hvc0`.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from miniguest.cli.boot import DomainOptions
from miniguest.cli.boot import error as _err
from miniguest.toolstack import initramfs as I
from miniguest.toolstack.libxl import Guest


def add_domain_options(parser: argparse.ArgumentParser) -> None:
    """No boot options: initramfs builds an archive, not a domain."""


def configure_domain(domain: Guest, args: argparse.Namespace) -> None:
    pass


def register(subparsers: Any, options: DomainOptions) -> None:
    p = subparsers.add_parser("initramfs", help="make a busybox initramfs (newc cpio) for a Linux guest",
                              description=__doc__.split("\n\n", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", metavar="OUT.cpio", help="the archive to write")
    p.add_argument("--busybox", metavar="SOURCE",
                   help="Debian's busybox-static: its .deb, an unpacked package directory, or the binary")
    p.add_argument("--fetch", action="store_true",
                   help="fetch busybox-static with apt-get download (into $MINIGUEST_CACHE or ~/.cache/miniguest)")
    p.add_argument("--kernel-modules", metavar="SOURCE",
                   help="the kernel's package (linux-image .deb or unpacked directory, or lib/modules/RELEASE): "
                        "add modules from it")
    p.add_argument("--release", metavar="RELEASE", help="the kernel release when the package holds several")
    p.add_argument("--add-module", action="append", metavar="NAME", default=None,
                   help="a module to load at boot, with its dependencies (repeatable; default with "
                        "--kernel-modules: xen-blkfront and xen-netfront)")
    p.add_argument("--script", metavar="FILE", help="a script /init runs before the shell")
    p.set_defaults(func=cmd_initramfs)


def cmd_initramfs(args: argparse.Namespace) -> int:
    try:
        busybox = I.busybox_binary(args.busybox, fetch=args.fetch)
        modules = None
        names: list[str] = []
        if args.kernel_modules:
            modules = I.KernelModules.find(args.kernel_modules, args.release)
            names = args.add_module if args.add_module is not None else list(I.DEFAULT_MODULES)
        elif args.add_module:
            raise I.InitramfsError("--add-module needs --kernel-modules (the kernel's package)")
        script = None
        if args.script:
            try:
                with open(args.script, "rb") as f:
                    script = f.read()
            except OSError as e:
                raise I.InitramfsError(f"{args.script}: {e.strerror}") from None
        data, loads = I.build(busybox, modules, names, script)
    except I.InitramfsError as e:
        _err(str(e))
        return 1
    try:
        tmp = args.output + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, args.output)
    except OSError as e:
        _err(f"{args.output}: {e.strerror}")
        return 1
    extra = f", modules: {' '.join(loads)}" if loads else ""
    print(f"{args.output}: {len(data)} bytes (busybox{extra}{', script' if script else ''})")
    return 0
