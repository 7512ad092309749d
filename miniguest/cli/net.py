"""`boot` options for network interfaces: --net (repeatable) and --net-pcap (toolstack/network.py). A Feature
(cli/boot.py) with no subcommands of its own; `domain_options` turns the options into create_domain's vifs."""
from __future__ import annotations

import argparse
from typing import Any

from miniguest.toolstack.network import parse_net_option
from miniguest.toolstack.xlcfg import ConfigError


def register(subparsers: Any, options: Any) -> None:
    pass


def configure_domain(domain: Any, args: argparse.Namespace) -> None:
    pass


def add_domain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--net", action="append", default=[], metavar="user|socket:PATH|none[,mac=M,...]",
                   help="add a network interface (repeatable): `user` is passt (DHCP, DNS, TCP/UDP to the host "
                        "through the gateway address), `socket:PATH` frames on a Unix stream socket (connects "
                        "if PATH exists, else listens), `none` goes nowhere; keys mac=, devid=, pcap=FILE, mtu=")
    p.add_argument("--net-pcap", metavar="FILE",
                   help="write the first network interface's frames to FILE (pcap, for Wireshark)")


def domain_options(args: argparse.Namespace, opts: dict) -> None:
    vifs = list(opts.get("vifs") or []) + [parse_net_option(text) for text in getattr(args, "net", [])]
    pcap = getattr(args, "net_pcap", None)
    if pcap:
        if not vifs:
            raise ConfigError("--net-pcap needs a network interface (--net or vif= in the configuration)")
        if vifs[0].pcap is None:
            vifs[0].pcap = pcap
    if vifs:
        opts["vifs"] = vifs
