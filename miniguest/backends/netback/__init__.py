"""netback: the backend of Xen's network split driver (netif), with host sides (passt, a Unix socket)."""
from miniguest.backends.netback.links import Link, LinkError, NullLink, PasstLink, SocketLink, parse_link
from miniguest.backends.netback.vif import Vif
from miniguest.backends.netback.xenbus import NetbackDriver, netback, parse_mac

__all__ = ["Link", "LinkError", "NullLink", "PasstLink", "SocketLink", "parse_link", "Vif", "NetbackDriver",
           "netback", "parse_mac"]
