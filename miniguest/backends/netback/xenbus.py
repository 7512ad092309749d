"""netback's xenbus side (Linux's drivers/net/xen-netback/xenbus.c): the features it advertises, what it
reads from the frontend when the frontend says Connected, and the host side each vif is plugged into.

probe:   feature-sg, feature-gso-tcpv4/6 (done in software: frames are cut into MSS-sized segments before
         they reach the host side), feature-ipv6-csum-offload, feature-rx-copy, feature-rx-flip = 0,
         feature-multicast-control, feature-split-event-channels, multi-queue-max-queues; the vif's host side
         is started and, as a hotplug script would, hotplug-status = connected written.
connect (frontend Connected; Initialised changes nothing): multi-queue-num-queues (1 .. max), our `mac`,
         request-rx-copy (required: rx-flip is not supported), feature-rx-notify, feature-sg,
         feature-no-csum-offload, feature-ipv6-csum-offload, feature-gso-tcpv4/6, request-multicast-control;
         per queue (the frontend's directory for one queue, queue-N/ for several) tx-ring-ref, rx-ring-ref and
         event-channel-tx + event-channel-rx or event-channel. Anything missing or unusable is
         xenbus_dev_fatal: the error in dom0's error/ node, our state Closing, the guest and other devices
         carry on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from miniguest.abi import errno as E
from miniguest.abi.xenbus import (XenbusStateClosed, XenbusStateClosing, XenbusStateConnected,
                                  XenbusStateInitialised, XenbusStateInitialising, XenbusStateInitWait)
from miniguest.backends.netback.links import Link, LinkError, NullLink
from miniguest.backends.netback.pcap import PcapWriter
from miniguest.backends.netback.vif import MAX_QUEUES, QueueConfig, Vif, VifDisabled, VifFeatures
from miniguest.backends.xenbus import BackendDevice, SplitDriver, XenbusBackendBus, parse_uint
from miniguest.hypervisor.host import EvtchnError, GrantError

if TYPE_CHECKING:
    from miniguest.hypervisor.host import Domain, Host

DRIVER = "netback"


@dataclass
class HostSide:
    """What the toolstack decided for a vif beyond the store: where its frames go, and a capture file."""
    link: Link = field(default_factory=NullLink)
    pcap_path: Optional[str] = None
    started: bool = False


def parse_mac(text: Optional[str]) -> Optional[bytes]:
    """xen_net_read_mac: six hex bytes separated by colons."""
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                  for p in parts):
        return None
    return bytes(int(p, 16) for p in parts)


class NetbackDriver(SplitDriver):
    kind = "vif"
    connect_on = (XenbusStateConnected,)
    wait_on = (XenbusStateInitialised,)

    def __init__(self, host: "Host", max_queues: int = MAX_QUEUES) -> None:
        self.host = host
        self.max_queues = max_queues
        self.host_sides: dict[tuple[int, int], HostSide] = {}
        self.vifs: dict[tuple[int, int], Vif] = {}

    # -- the toolstack's part ---------------------------------------------------------------------------------
    def plug(self, domain: "Domain", devid: int, link: Link, pcap_path: Optional[str] = None) -> None:
        """Before the vif is added to the store: start its host side (LinkError: it cannot be started)."""
        key = (domain.domid, devid)
        old = self.host_sides.pop(key, None)
        if old is not None:
            old.link.close()
        link.start(self.host.loop)
        side = HostSide(link, pcap_path, True)
        self.host_sides[key] = side
        if link.waits_for_host:
            domain.idle_follows_host += 1

            def unplug(d: "Domain") -> None:
                d.idle_follows_host = max(0, d.idle_follows_host - 1)
            domain.on_final.append(unplug)
        domain.on_idle.append(lambda: self._poll(key))
        domain.on_final.append(lambda d: self.unplug(d.domid, devid))

    def unplug(self, domid: int, devid: int) -> None:
        vif = self.vifs.pop((domid, devid), None)
        if vif is not None:
            vif.close()
        side = self.host_sides.pop((domid, devid), None)
        if side is not None:
            side.link.close()

    def _poll(self, key: tuple[int, int]) -> None:
        vif = self.vifs.get(key)
        if vif is not None:
            vif.poll()

    # -- xenbus -----------------------------------------------------------------------------------------------
    def otherend_changed(self, dev: BackendDevice, state: int) -> None:
        if state == XenbusStateInitialising and dev.state in (XenbusStateConnected, XenbusStateClosing):
            # set_backend_state(InitWait) from Connected: disconnect, then Closing, Closed, InitWait.
            self.disconnect(dev)
            for step in (XenbusStateClosing, XenbusStateClosed, XenbusStateInitWait):
                dev.switch_state(step)
            return
        super().otherend_changed(dev, state)

    def advertise(self, dev: BackendDevice) -> None:
        dev.write_many({"feature-sg": 1, "feature-gso-tcpv4": 1, "feature-gso-tcpv6": 1,
                        "feature-ipv6-csum-offload": 1, "feature-rx-copy": 1, "feature-rx-flip": 0,
                        "feature-multicast-control": 1, "feature-split-event-channels": 1,
                        "multi-queue-max-queues": self.max_queues})
        key = (dev.otherend_id, dev.devid)
        side = self.host_sides.get(key)
        if side is None:
            side = self.host_sides[key] = HostSide()
        pcap = None
        if side.pcap_path:
            dom = self.host.domains.get(dev.otherend_id)
            clock = (lambda: dom.clock.now_ns()) if dom is not None else (lambda: 0)
            try:
                pcap = PcapWriter(side.pcap_path, clock, dev.log)
            except OSError as e:
                dev.log(f"pcap {side.pcap_path}: {e.strerror or e}; no capture")
        old = self.vifs.pop(key, None)
        if old is not None:
            old.disconnect()
        self.vifs[key] = Vif(self.host, dev, side.link, pcap)
        dev.data = self.vifs[key]
        dev.write("hotplug-status", "connected")

    def connect(self, dev: BackendDevice) -> bool:
        vif = dev.data
        assert isinstance(vif, Vif)
        fe = dev.otherend
        requested = dev.read_otherend_uint("multi-queue-num-queues", 1)
        if requested is None or not 1 <= requested <= self.max_queues:
            dev.fatal(-E.EINVAL, f"guest requested {dev.read_otherend('multi-queue-num-queues')} queues, "
                                 f"exceeding the maximum of {self.max_queues}.")
            return False
        mac = parse_mac(dev.read("mac"))
        if mac is None:
            dev.fatal(-E.ENOENT, f"parsing {dev.nodename}/mac")
            return False
        if dev.read_otherend_uint("request-rx-copy", 0) != 1:
            dev.fatal(-E.EOPNOTSUPP, f"{fe}/request-rx-copy: the frontend must use rx-copy (rx-flip is not "
                                     f"supported)")
            return False
        feats = VifFeatures(
            rx_copy=True,
            rx_notify=bool(dev.read_otherend_uint("feature-rx-notify", 0)),
            sg=bool(dev.read_otherend_uint("feature-sg", 0)),
            csum_offload=not dev.read_otherend_uint("feature-no-csum-offload", 0),
            ipv6_csum_offload=bool(dev.read_otherend_uint("feature-ipv6-csum-offload", 0)),
            gso_tcpv4=bool(dev.read_otherend_uint("feature-gso-tcpv4", 0)),
            gso_tcpv6=bool(dev.read_otherend_uint("feature-gso-tcpv6", 0)),
            multicast_control=bool(dev.read_otherend_uint("request-multicast-control", 0)))
        queues = []
        for i in range(requested):
            base = fe if requested == 1 else f"{fe}/queue-{i}"
            tx_ref = parse_uint(dev.read_otherend("tx-ring-ref", base))
            rx_ref = parse_uint(dev.read_otherend("rx-ring-ref", base))
            if tx_ref is None or rx_ref is None:
                dev.fatal(-E.ENOENT, f"reading {base}/ring-ref")
                return False
            tx_ev = parse_uint(dev.read_otherend("event-channel-tx", base))
            rx_ev = parse_uint(dev.read_otherend("event-channel-rx", base))
            if tx_ev is None or rx_ev is None:
                tx_ev = rx_ev = parse_uint(dev.read_otherend("event-channel", base))
            if tx_ev is None:
                dev.fatal(-E.ENOENT, f"reading {base}/event-channel(-tx/rx)")
                return False
            queues.append(QueueConfig(tx_ref, rx_ref, tx_ev, rx_ev))
        try:
            vif.connect(feats, queues, mac)
        except (GrantError, EvtchnError, VifDisabled, ValueError) as e:
            q = queues[vif.failed_queue or 0]
            dev.fatal(-E.EINVAL, f"mapping shared-frames {q.tx_ring_ref}/{q.rx_ring_ref} port tx {q.tx_evtchn} "
                                 f"rx {q.rx_evtchn}: {e}")
            return False
        return True

    def disconnect(self, dev: BackendDevice) -> None:
        vif = dev.data
        if isinstance(vif, Vif):
            vif.disconnect()

    def remove(self, dev: BackendDevice) -> None:
        """The device is gone from the store (the toolstack removed it, or the domain ended): the vif and
        its host side go with it."""
        self.disconnect(dev)
        self.unplug(dev.otherend_id, dev.devid)


def netback(host: "Host", store) -> NetbackDriver:
    """The host's netback driver, registered on its xenbus (made on first use)."""
    bus = XenbusBackendBus.of(host, store)
    driver = bus.drivers.get("vif")
    if not isinstance(driver, NetbackDriver):
        driver = bus.register_driver(NetbackDriver(host))
    assert isinstance(driver, NetbackDriver)
    return driver


__all__ = ["NetbackDriver", "HostSide", "netback", "parse_mac", "LinkError", "DRIVER"]
