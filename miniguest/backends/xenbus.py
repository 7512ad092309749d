"""The backend half of xenbus, as Linux's xenbus_probe_backend.c and xenbus_client.c give it to a dom0 driver.

A split-driver backend (blkback, netback) is a `BackendDriver` registered on the host's `XenbusBackendBus` for
one device kind ("vbd", "vif"). The bus watches dom0's `backend/<kind>` directory in the store: when the
toolstack writes `backend/<kind>/<domid>/<devid>/` (libxl's device_add, toolstack/device.py) the bus makes a
`BackendDevice` -- its own node, the frontend's node (`frontend`, `frontend-id`) -- watches the frontend's
`state` and calls the driver's `probe`; every change of the frontend's state reaches the driver's
`otherend_changed(dev, state)` with the state as read at that moment (a missing or unparsable `state` is
XenbusStateUnknown, as xenbus_read_driver_state has it). When the backend directory goes away (the toolstack
removed the device, or destroyed the domain) the driver's `remove` runs and everything the device still holds
is released: its grant mappings, its event channels, its watches.

A backend sees its guest only through what the device hands it: the store (`read`, `write`, `read_otherend`,
`switch_state`, `fatal`), grants the frontend gave dom0 (`map_grant`, `map_ring`: memoryviews of the granted
frames, through the hypervisor's public host interface) and dom0's end of event channels (`bind_evtchn`,
`notify`). Everything it reads was written by the guest: a driver checks it and, when it cannot go on, calls
`fatal` (Linux's xenbus_dev_fatal: the error under dom0's `error/backend/...`, state Closing) -- the guest
and every other device carry on. An exception escaping a driver callback is caught here, reported in one line
and stops only that device.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Optional

from miniguest.abi import errno as E
from miniguest.abi.xenbus import (STATE_NAMES, XenbusStateClosed, XenbusStateClosing, XenbusStateConnected,
                                  XenbusStateInitialised, XenbusStateInitialising, XenbusStateInitWait,
                                  XenbusStateUnknown)
from miniguest.backends.ring import PagedBuffer
from miniguest.backends.xenstore import XenstoreError

if TYPE_CHECKING:
    from miniguest.backends.xenstore import Dom0Store
    from miniguest.hypervisor.host import GrantMapping, Host

log = logging.getLogger("miniguest.backends")

#: Linux's XENBUS_MAX_RING_GRANTS: the most pages a shared ring may span (ring-page-order up to 4)
XENBUS_MAX_RING_GRANT_ORDER = 4
XENBUS_MAX_RING_GRANTS = 1 << XENBUS_MAX_RING_GRANT_ORDER
BUS_SERVICE = "xenbus-backend"


def state_name(state: int) -> str:
    return f"{state} ({STATE_NAMES.get(state, 'invalid')})"


def parse_uint(text: Optional[str]) -> Optional[int]:
    """A store value as an unsigned decimal (what xenbus_scanf "%u" accepts from a sane peer), else None."""
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit() or len(text) > 20:
        return None
    return int(text)


class BackendDriver:
    """A backend driver (Linux's struct xenbus_driver, backend side). Subclasses set `kind` and override the
    callbacks; each gets the device it concerns."""

    kind = ""

    def probe(self, dev: "BackendDevice") -> None:
        """A new device: set up, advertise features, usually `dev.switch_state(XenbusStateInitWait)`."""

    def otherend_changed(self, dev: "BackendDevice", state: int) -> None:
        """The frontend's state is now `state`."""

    def remove(self, dev: "BackendDevice") -> None:
        """The device is going away: disconnect. What it still holds is released after this returns."""


class BackendDevice:
    """One backend device (Linux's struct xenbus_device): `nodename` is our directory
    (/local/domain/0/backend/<kind>/<domid>/<devid>), `otherend` the frontend's, `otherend_id` its domain."""

    def __init__(self, bus: "XenbusBackendBus", driver: BackendDriver, domid: int, devid: int, nodename: str,
                 otherend: str) -> None:
        self.bus = bus
        self.driver = driver
        self.kind = driver.kind
        self.otherend_id = domid
        self.devid = devid
        self.nodename = nodename
        self.otherend = otherend
        self.state = XenbusStateInitialising
        self.data: object = None               # the driver's per-device state (Linux's drvdata)
        self.removed = False
        self.broken: Optional[str] = None       # why the device stopped (an internal error)
        self._grants: dict[int, "GrantMapping"] = {}
        self._ports: set[int] = set()
        self._watches: list = []

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.otherend_id}-{self.devid}"

    @property
    def store(self) -> "Dom0Store":
        return self.bus.store

    # -- the store ----------------------------------------------------------------------------------------
    def _read(self, path: str) -> Optional[str]:
        try:
            return self.store.read(path).decode("utf-8", "replace")
        except XenstoreError:
            return None

    def read(self, key: str) -> Optional[str]:
        """Our node `key`, or None if it does not exist."""
        return self._read(f"{self.nodename}/{key}")

    def read_uint(self, key: str, default: Optional[int] = None) -> Optional[int]:
        value = parse_uint(self.read(key))
        return default if value is None else value

    def read_otherend(self, key: str, base: Optional[str] = None) -> Optional[str]:
        """The frontend's node `key` (under `base`, a directory of the frontend's, if given)."""
        return self._read(f"{base or self.otherend}/{key}")

    def read_otherend_uint(self, key: str, default: Optional[int] = None, base: Optional[str] = None) \
            -> Optional[int]:
        """xenbus_read_unsigned on the frontend: `default` when missing or not a number."""
        value = parse_uint(self.read_otherend(key, base))
        return default if value is None else value

    def write(self, key: str, value: object) -> None:
        self.store.write(f"{self.nodename}/{key}", str(value))

    def write_many(self, values: dict[str, object]) -> None:
        """Several of our nodes in one transaction (retried on EAGAIN), as a backend's connect() writes them."""
        for attempt in range(16):
            try:
                with self.store.transaction() as t:
                    for key, value in values.items():
                        t.write(f"{self.nodename}/{key}", str(value))
                return
            except XenstoreError as err:
                if err.name != "EAGAIN" or attempt == 15:
                    raise

    @property
    def online(self) -> bool:
        """xenbus_dev_is_online: the toolstack has not asked the device to go away."""
        return bool(self.read_uint("online", 0))

    def otherend_state(self) -> int:
        """xenbus_read_driver_state of the frontend (Unknown if missing or not a number)."""
        value = parse_uint(self.read_otherend("state"))
        return XenbusStateUnknown if value is None else value

    def switch_state(self, state: int) -> None:
        """xenbus_switch_state: write our `state` node (nothing if it is already that)."""
        if state == self.state or self.removed:
            return
        try:
            self.write("state", state)
        except XenstoreError as err:
            self.error(err.errno, f"writing new state {state}")
            return
        self.state = state

    def error(self, err: int, message: str) -> None:
        """xenbus_dev_error: report, and write "<errno> <message>" to dom0's error/backend/... node."""
        self.log(f"error {abs(err)}: {message}")
        rel = self.nodename.split("/local/domain/0/", 1)[-1]
        try:
            self.store.write(f"/local/domain/0/error/{rel}/error", f"{abs(err)} {message}"[:1024])
        except XenstoreError:
            pass

    def fatal(self, err: int, message: str) -> None:
        """xenbus_dev_fatal: report the error and switch to Closing; the device stops serving the frontend."""
        self.error(err, message)
        self.switch_state(XenbusStateClosing)

    def log(self, message: str) -> None:
        """A problem worth the user's attention (the domain log and a warning on the backends' logger)."""
        self.bus.report(self.otherend_id, f"{self.kind} {self.devid}: {message}")

    def info(self, message: str) -> None:
        """What Linux's backends say with pr_info: the domain log, at info level."""
        self.bus.report(self.otherend_id, f"{self.kind} {self.devid}: {message}", logging.INFO)

    def debug(self, message: str) -> None:
        """What Linux's backends say with pr_debug (a guest's bad request): the debug log only."""
        log.debug("d%d: %s %d: %s", self.otherend_id, self.kind, self.devid, message)

    def watch(self, path: str, callback: Callable[[str], None]) -> None:
        """Watch `path` (our node's `key` if relative) for as long as the device lives: callback(path)."""
        if not path.startswith("/"):
            path = f"{self.nodename}/{path}"

        def fired(event_path: str, token: str) -> None:
            self.bus.call(self, lambda: callback(event_path))
        self._watches.append(self.store.watch(path, fired))

    # -- grants -------------------------------------------------------------------------------------------
    def map_grant(self, ref: int, readonly: bool = False) -> "GrantMapping":
        """Map grant `ref` of the frontend's domain (GrantError if it does not grant it to dom0)."""
        mapping = self.bus.host.map_grant_ref(self.otherend_id, ref, readonly)
        self._grants[id(mapping)] = mapping
        return mapping

    def unmap_grant(self, mapping: "GrantMapping") -> None:
        if self._grants.pop(id(mapping), None) is not None:
            self.bus.host.unmap_grant_ref(mapping)

    def map_ring(self, refs: list[int]) -> tuple[PagedBuffer, list["GrantMapping"]]:
        """xenbus_map_ring_valloc: the frontend's ring pages, writable, seen as one buffer. All or nothing:
        GrantError if any of them cannot be mapped."""
        if not 1 <= len(refs) <= XENBUS_MAX_RING_GRANTS:
            raise ValueError(f"{len(refs)} ring pages (1..{XENBUS_MAX_RING_GRANTS})")
        mappings: list["GrantMapping"] = []
        try:
            for ref in refs:
                mappings.append(self.map_grant(ref))
        except Exception:
            for m in mappings:
                self.unmap_grant(m)
            raise
        return PagedBuffer([m.view for m in mappings]), mappings  # type: ignore[misc]

    def unmap_ring(self, mappings: list["GrantMapping"]) -> None:
        for m in mappings:
            self.unmap_grant(m)

    @property
    def nr_mapped(self) -> int:
        return len(self._grants)

    # -- event channels -----------------------------------------------------------------------------------
    def bind_evtchn(self, remote_port: int, handler: Callable[[], None]) -> int:
        """Bind dom0's end to the frontend's unbound port `remote_port` (EvtchnError if it is not one):
        `handler()` runs when the frontend notifies. Returns our local port."""
        local = self.bus.host.evtchn.bind_interdomain(self.otherend_id, remote_port,
                                                      lambda: self.bus.call(self, handler))
        self._ports.add(local)
        return local

    def notify(self, local_port: int) -> None:
        if local_port in self._ports:
            self.bus.host.evtchn.notify(local_port)

    def unbind_evtchn(self, local_port: int) -> None:
        if local_port in self._ports:
            self._ports.discard(local_port)
            self.bus.host.evtchn.unbind(local_port)

    # -- teardown -----------------------------------------------------------------------------------------
    def release_all(self) -> None:
        """Drop everything the device still holds: watches, event channels, grant mappings."""
        for w in self._watches:
            try:
                self.store.unwatch(w)
            except XenstoreError:
                pass
        self._watches.clear()
        for port in list(self._ports):
            self.unbind_evtchn(port)
        for mapping in list(self._grants.values()):
            self.unmap_grant(mapping)


class XenbusBackendBus:
    """dom0's xenbus for backends (one per host: host.services["xenbus-backend"])."""

    def __init__(self, host: "Host", store: "Dom0Store") -> None:
        self.host = host
        self.store = store
        self.drivers: dict[str, BackendDriver] = {}
        self.devices: dict[tuple[str, int, int], BackendDevice] = {}
        #: per-domain report sinks (the toolstack's domain log); reports also go to the "miniguest.backends" log
        self.reporters: dict[int, Callable[[str], None]] = {}

    @classmethod
    def of(cls, host: "Host", store: "Dom0Store") -> "XenbusBackendBus":
        """The host's bus, made on first use."""
        bus = host.services.get(BUS_SERVICE)
        if not isinstance(bus, cls):
            bus = cls(host, store)
            host.services[BUS_SERVICE] = bus
        return bus

    def report(self, domid: int, message: str, level: int = logging.WARNING) -> None:
        log.log(level, "d%d: %s", domid, message)
        sink = self.reporters.get(domid)
        if sink is not None:
            sink(message)

    def register_driver(self, driver: BackendDriver) -> BackendDriver:
        """xenbus_register_backend: serve `backend/<kind>`; a driver of that kind already there is kept."""
        if driver.kind in self.drivers:
            return self.drivers[driver.kind]
        self.drivers[driver.kind] = driver
        base = f"/local/domain/0/backend/{driver.kind}"
        self.store.watch(base, lambda path, token: self._changed(driver, path))
        return driver

    def call(self, dev: BackendDevice, fn: Callable[[], None]) -> None:
        """Run a driver callback for `dev`; an exception stops that device only, with one line."""
        if dev.removed or dev.broken:
            return
        try:
            fn()
        except Exception as exc:          # a bug in a backend: this device stops, nothing else does
            log.debug("backend internal error", exc_info=exc)
            dev.broken = f"{type(exc).__name__}: {exc}"
            dev.log(f"internal error, device stopped: {dev.broken}")
            try:
                dev.driver.remove(dev)        # let it close what it opened on the host
            except Exception:
                pass
            try:
                dev.release_all()
            except Exception:
                pass

    # -- xenbus_dev_changed: a watch event somewhere under backend/<kind> ---------------------------------
    def _changed(self, driver: BackendDriver, path: str) -> None:
        base = f"/local/domain/0/backend/{driver.kind}"
        rest = path[len(base):].strip("/").split("/") if path.startswith(base) else []
        if len(rest) >= 2:
            self._check(driver, rest[0], rest[1])
            return
        # The watch's first event, or a whole domain directory: look at everything below.
        domids = [rest[0]] if rest and rest[0] else self._ls(base)
        seen = set()
        for d in domids:
            for devid in self._ls(f"{base}/{d}"):
                seen.add((d, devid))
                self._check(driver, d, devid)
        for key, dev in list(self.devices.items()):
            if key[0] == driver.kind and (not domids or str(key[1]) in domids) \
                    and (str(key[1]), str(key[2])) not in seen:
                self._remove(dev)

    def _ls(self, path: str) -> list[str]:
        try:
            return self.store.ls(path)
        except XenstoreError:
            return []

    def _check(self, driver: BackendDriver, d: str, devid: str) -> None:
        if not (d.isdigit() and devid.isdigit()):
            return
        key = (driver.kind, int(d), int(devid))
        nodename = f"/local/domain/0/backend/{driver.kind}/{d}/{devid}"
        exists = self.store.exists(nodename)
        dev = self.devices.get(key)
        if dev is not None and not exists:
            self._remove(dev)
        elif dev is None and exists:
            self._probe(driver, key, nodename)

    def _probe(self, driver: BackendDriver, key: tuple[str, int, int], nodename: str) -> None:
        """xenbus_probe_node + read_otherend_details + watch_otherend, then the driver's probe."""
        _, domid, devid = key
        try:
            frontend = self.store.read(f"{nodename}/frontend").decode("utf-8", "replace")
            frontend_id = parse_uint(self.store.read(f"{nodename}/frontend-id").decode("ascii", "replace"))
        except XenstoreError:
            return                      # not complete yet: the toolstack's transaction will fire again
        if frontend_id != domid or not frontend.startswith("/") or not self.store.exists(frontend):
            self.report(domid, f"{driver.kind} {devid}: unable to read the frontend's details "
                               f"(frontend {frontend!r}, frontend-id {frontend_id})")
            return
        dev = BackendDevice(self, driver, domid, devid, nodename, frontend)
        self.devices[key] = dev
        self.call(dev, lambda: driver.probe(dev))
        if not dev.broken:
            dev.watch(f"{frontend}/state", lambda path: self._otherend_changed(dev))

    def _otherend_changed(self, dev: BackendDevice) -> None:
        state = dev.otherend_state()
        dev.driver.otherend_changed(dev, state)

    def unregister(self, dev: BackendDevice) -> None:
        """device_unregister: the driver is done with the device (frontend gone or closed for good)."""
        self._remove(dev)

    def _remove(self, dev: BackendDevice) -> None:
        key = (dev.kind, dev.otherend_id, dev.devid)
        if self.devices.get(key) is dev:
            del self.devices[key]
        if dev.removed:
            return
        if not dev.broken:
            try:
                dev.driver.remove(dev)
            except Exception as exc:
                log.debug("backend internal error in remove", exc_info=exc)
                dev.log(f"internal error while removing: {type(exc).__name__}: {exc}")
        dev.removed = True
        dev.release_all()

    def devices_of(self, domid: int) -> list[BackendDevice]:
        return [d for (_, dom, _), d in sorted(self.devices.items()) if dom == domid]


class SplitDriver(BackendDriver):
    """The handshake most backends share (Linux's blkback frontend_changed; netback differs only in when it
    connects, `connect_on`):

    - probe: `advertise(dev)` (features a frontend reads before it sets up), then InitWait;
    - frontend Initialising while we are Closed: it is coming back -- InitWait again ("prepare for reconnect");
    - frontend in `connect_on` and we are not Connected: `disconnect` what a previous connection left, then
      `connect(dev)` (map the rings, bind the event channels, write the details) and, if it returned True,
      Connected;
    - frontend Closing: Closing;  frontend Closed: `disconnect`, Closed, and gone if the toolstack set
      online=0;  frontend Unknown (its directory removed): gone;
    - a state in `wait_on`: nothing;  any other state: fatal ("saw state N at frontend").
    A failed connect calls `dev.fatal` itself and leaves the device disconnected.
    """

    connect_on: tuple[int, ...] = (XenbusStateInitialised, XenbusStateConnected)
    wait_on: tuple[int, ...] = ()          # frontend states that change nothing (netback: Initialised)

    def advertise(self, dev: BackendDevice) -> None:
        pass

    def connect(self, dev: BackendDevice) -> bool:
        return False

    def disconnect(self, dev: BackendDevice) -> None:
        pass

    def probe(self, dev: BackendDevice) -> None:
        self.advertise(dev)
        dev.switch_state(XenbusStateInitWait)

    def otherend_changed(self, dev: BackendDevice, state: int) -> None:
        if state == XenbusStateInitialising:
            if dev.state == XenbusStateClosed:
                dev.info("frontend is back: prepare for reconnect")
                dev.switch_state(XenbusStateInitWait)
        elif state in self.connect_on:
            if dev.state == XenbusStateConnected:
                return                   # (two watch events in quick succession: already done)
            self.disconnect(dev)
            if self.connect(dev):
                dev.switch_state(XenbusStateConnected)
            else:
                self.disconnect(dev)
        elif state in self.wait_on:
            pass
        elif state == XenbusStateClosing:
            dev.switch_state(XenbusStateClosing)
        elif state == XenbusStateClosed:
            self.disconnect(dev)
            dev.switch_state(XenbusStateClosed)
            if not dev.online:
                dev.bus.unregister(dev)
        elif state == XenbusStateUnknown:
            dev.bus.unregister(dev)
        else:
            dev.fatal(-E.EINVAL, f"saw state {state} at frontend")

    def remove(self, dev: BackendDevice) -> None:
        self.disconnect(dev)


__all__ = ["BackendDriver", "BackendDevice", "SplitDriver", "XenbusBackendBus", "PagedBuffer", "parse_uint",
           "state_name", "XENBUS_MAX_RING_GRANTS", "XENBUS_MAX_RING_GRANT_ORDER"]
