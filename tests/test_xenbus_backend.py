"""The xenbus backend machinery (backends/xenbus.py) and libxl's device add/destroy (toolstack/device.py):
the store nodes and permissions, the XenbusState handshake driven by watches, reconnection, removal, and
what a backend holds of the guest (grants, event channels) being released."""
from __future__ import annotations

import pytest

from miniguest.abi.xenbus import (XenbusStateClosed, XenbusStateClosing, XenbusStateConnected,
                                  XenbusStateInitialised, XenbusStateInitialising, XenbusStateInitWait)
from miniguest.backends.xenbus import SplitDriver, XenbusBackendBus
from miniguest.toolstack.device import (DeviceExists, backend_path, device_destroy, device_generic_add,
                                        devices_destroy, frontend_path)
from miniguest.toolstack.nic import NicSpec, device_nic_add

from pyfront import GTF_reading, GTF_writing, PyGuest


class EchoDriver(SplitDriver):
    """A one-page ring backend: connect maps `ring-ref`, binds `event-channel`; an event copies byte 0 of the
    page to byte 1 and notifies back."""

    kind = "echo"

    def __init__(self) -> None:
        self.events: list[str] = []

    def advertise(self, dev):
        dev.write("feature-echo", 1)
        self.events.append("probe")

    def connect(self, dev):
        ref = dev.read_otherend_uint("ring-ref")
        port = dev.read_otherend_uint("event-channel")
        if ref is None or port is None:
            dev.fatal(-22, "reading ring-ref/event-channel")
            return False
        try:
            buf, maps = dev.map_ring([ref])
            local = dev.bind_evtchn(port, lambda: self.kick(dev))
        except Exception as e:
            dev.fatal(-22, f"mapping ring-ref {ref} port {port}: {e}")
            return False
        dev.data = (buf, maps, local)
        self.events.append("connect")
        return True

    def kick(self, dev):
        buf, _, local = dev.data
        buf.write(1, buf.read(0, 1))
        dev.notify(local)

    def disconnect(self, dev):
        if dev.data:
            buf, maps, local = dev.data
            dev.unbind_evtchn(local)
            dev.unmap_ring(maps)
            dev.data = None
            self.events.append("disconnect")


@pytest.fixture
def guest():
    g = PyGuest()
    yield g
    g.close()


def add_echo(g, devid=0):
    bus = XenbusBackendBus.of(g.dom.host, g.dom.store)
    drv = bus.register_driver(EchoDriver())
    device_generic_add(g.dom.store, g.domid, "echo", devid, {"extra": "x"}, {"hello": "1"}, {"ro": "2"})
    return bus, drv


def be_state(g, devid=0):
    return int(g.dom.store.read(backend_path(g.domid, "echo", devid) + "/state"))


def test_device_nodes_and_permissions(guest):
    g = guest
    bus, drv = add_echo(g)
    fe, be = frontend_path(g.domid, "echo", 0), backend_path(g.domid, "echo", 0)
    store = g.dom.store
    assert store.read(f"{fe}/backend").decode() == be
    assert store.read(f"{fe}/backend-id") == b"0"
    assert store.read(f"{be}/frontend").decode() == fe
    assert store.read(f"{be}/frontend-id").decode() == str(g.domid)
    assert store.read(f"{be}/online") == b"1"
    assert store.read(f"/libxl/{g.domid}/device/echo/0/backend").decode() == be
    assert [str(p) for p in store.get_perms(fe)] == [f"n{g.domid}", "r0"]
    assert [str(p) for p in store.get_perms(be)] == ["n0", f"r{g.domid}"]
    assert [str(p) for p in store.get_perms(f"{fe}/ro")] == ["n0", f"r{g.domid}"]
    # what the guest may do: write its frontend, read (not write) the backend and the read-only entries
    assert g.read(f"{be}/feature-echo") == "1"
    g.write(f"{fe}/hello", "2")
    with pytest.raises(RuntimeError, match="EACCES"):
        g.write(f"{be}/state", "4")
    with pytest.raises(RuntimeError, match="EACCES"):
        g.write(f"{fe}/ro", "3")
    assert be_state(g) == XenbusStateInitWait and drv.events == ["probe"]
    with pytest.raises(DeviceExists):
        device_generic_add(store, g.domid, "echo", 0, {}, {})


def connect(g, devid=0):
    fe = frontend_path(g.domid, "echo", devid)
    ring = g.alloc_page()
    ref = g.grant(ring)
    port = g.alloc_unbound()
    g.write(f"{fe}/ring-ref", ref)
    g.write(f"{fe}/event-channel", port)
    g.write(f"{fe}/state", XenbusStateInitialised)
    return fe, ring, ref, port


def test_handshake_ring_and_event(guest):
    g = guest
    bus, drv = add_echo(g)
    fe, ring, ref, port = connect(g)
    assert be_state(g) == XenbusStateConnected
    assert g.grant_flags(ref) & (GTF_reading | GTF_writing) == GTF_reading | GTF_writing
    assert not g.end_access(ref)              # revoking a grant dom0 maps fails, as Linux sees it
    g.page(ring)[0] = 0x5A
    g.notify(port)
    assert g.page(ring)[1] == 0x5A and g.pending(port)
    g.write(f"{fe}/state", XenbusStateConnected)
    assert drv.events == ["probe", "connect"]    # no second connect when already Connected
    # the frontend closes: the backend lets go of the ring and follows to Closed
    g.write(f"{fe}/state", XenbusStateClosing)
    assert be_state(g) == XenbusStateClosing
    g.write(f"{fe}/state", XenbusStateClosed)
    assert be_state(g) == XenbusStateClosed
    assert drv.events[-1] == "disconnect"
    assert g.grant_flags(ref) & (GTF_reading | GTF_writing) == 0 and g.end_access(ref)
    assert not g.dom.grants.dom0_pins
    # ... and comes back (a kexec'd kernel, a module reload): InitWait, then connected again
    g.write(f"{fe}/state", XenbusStateInitialising)
    assert be_state(g) == XenbusStateInitWait
    ref2 = g.grant(ring)
    g.write(f"{fe}/ring-ref", ref2)
    g.write(f"{fe}/state", XenbusStateInitialised)
    assert be_state(g) == XenbusStateConnected
    g.page(ring)[0] = 0x33
    g.notify(port)
    assert g.page(ring)[1] == 0x33


def test_bad_frontend_details_are_fatal_for_that_device_only(guest):
    g = guest
    bus, drv = add_echo(g, 0)
    device_generic_add(g.dom.store, g.domid, "echo", 1, {}, {})
    fe0 = frontend_path(g.domid, "echo", 0)
    g.write(f"{fe0}/ring-ref", 4000)            # a grant the guest never filled in
    g.write(f"{fe0}/event-channel", g.alloc_unbound())
    g.write(f"{fe0}/state", XenbusStateInitialised)
    assert be_state(g, 0) == XenbusStateClosing
    err = g.dom.store.read(f"/local/domain/0/error/backend/echo/{g.domid}/0/error").decode()
    assert err.startswith("22 mapping ring-ref 4000")
    assert any("echo 0: error 22: mapping ring-ref 4000" in m for m in g.dom.messages)
    # a state no frontend may be in: fatal too
    fe1 = frontend_path(g.domid, "echo", 1)
    g.write(f"{fe1}/state", 2)
    assert be_state(g, 1) == XenbusStateClosing
    # garbage in state reads as Unknown: the backend device goes away (the frontend's own loss)
    g.write(f"{fe1}/state", "banana")
    assert (g.domid, 1) not in {(d, i) for (_, d, i) in bus.devices}
    assert not g.dom.grants.dom0_pins


def test_driver_exception_stops_only_that_device(guest):
    g = guest

    class Buggy(EchoDriver):
        kind = "buggy"

        def connect(self, dev):
            raise ZeroDivisionError("boom")

    bus = XenbusBackendBus.of(g.dom.host, g.dom.store)
    bus.register_driver(Buggy())
    add_echo(g, 0)
    device_generic_add(g.dom.store, g.domid, "buggy", 0, {}, {})
    g.write(frontend_path(g.domid, "buggy", 0) + "/state", XenbusStateInitialised)
    assert any("buggy 0: internal error, device stopped: ZeroDivisionError: boom" in m for m in g.dom.messages)
    fe, ring, ref, port = connect(g)
    assert be_state(g) == XenbusStateConnected


def test_destroy_releases_grants_and_ports(guest):
    g = guest
    bus, drv = add_echo(g)
    fe, ring, ref, port = connect(g)
    host = g.dom.host
    assert host.evtchn.describe(bus.devices[("echo", g.domid, 0)]._ports.copy().pop()).startswith(f"d{g.domid}")
    devices_destroy(g.dom.store, g.domid)
    assert not bus.devices and drv.events[-1] == "disconnect"
    assert not g.dom.grants.dom0_pins and g.end_access(ref)
    assert not g.dom.store.exists(fe) and not g.dom.store.exists(backend_path(g.domid, "echo", 0))
    assert not g.dom.store.exists(f"/libxl/{g.domid}/device/echo/0")
    g.notify(port)                               # the guest's end is unbound again: nothing happens
    device_destroy(g.dom.store, g.domid, "echo", 0)      # twice: nothing left to do


def test_nic_add_writes_what_libxl_writes(guest):
    g = guest
    device_nic_add(g.dom.store, g.domid, NicSpec(devid=0, mac="00:16:3e:01:02:03"))
    device_nic_add(g.dom.store, g.domid, NicSpec(devid=1), domain_uuid=g.dom.uuid)
    fe, be = frontend_path(g.domid, "vif", 0), backend_path(g.domid, "vif", 0)
    store = g.dom.store
    assert store.read(f"{fe}/mac") == b"00:16:3e:01:02:03" == store.read(f"{be}/mac")
    assert store.read(f"{fe}/handle") == b"0" and store.read(f"{be}/handle") == b"0"
    assert store.read(f"{fe}/mtu") == b"1500"
    assert [str(p) for p in store.get_perms(f"{fe}/mtu")] == ["n0", f"r{g.domid}"]
    assert store.read(f"{be}/script") == b"/etc/xen/scripts/vif-bridge"
    assert store.read(f"{be}/type") == b"vif" and store.read(f"{be}/bridge") == b"xenbr0"
    mac1 = store.read(frontend_path(g.domid, "vif", 1) + "/mac").decode()
    assert mac1.startswith("00:16:3e:") and int(mac1.split(":")[3], 16) < 0x80


def test_domain_end_destroys_its_devices(guest):
    g = guest
    bus, drv = add_echo(g)
    fe, ring, ref, port = connect(g)
    for cb in g.dom.on_final:                   # what Domain.run does when the domain reaches a final state
        cb(g.dom)
    assert not bus.devices and not g.dom.grants.dom0_pins
    assert not g.dom.store.exists(fe)
