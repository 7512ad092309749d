"""Adding and removing split-driver devices in the store, as libxl does (tools/libs/light/libxl_device.c).

A device is a frontend directory the guest owns and a backend directory dom0 owns, pointing at each other:

    /local/domain/<domid>/device/<kind>/<devid>/            perms n<domid> r<backend>   (backend, backend-id,
                                                                                        state, + the kind's)
    /local/domain/<backend>/backend/<kind>/<domid>/<devid>/  perms n<backend> r<domid>   (frontend, frontend-id,
                                                                                        online, state, + ...)
    /libxl/<domid>/device/<kind>/<devid>/                    dom0 only (frontend, backend, a copy of the
                                                                        backend's entries)

all written in one transaction (libxl__device_generic_add), both `state`s at XenbusStateInitialising. Entries
for the frontend that the guest must not change ("ro_front", e.g. a vif's mtu) are owned by the backend. The
backend driver finds the new directory through its watch (backends/xenbus.py) and the handshake starts.
Removal (libxl__device_destroy) deletes the three directories; the backend sees its directory go and lets go
of the guest's grants and event channels.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from miniguest.abi.xenbus import XenbusStateInitialising
from miniguest.backends.xenstore import XenstoreError
from miniguest.backends.xenstore.perms import Perm

if TYPE_CHECKING:
    from miniguest.backends.xenstore import Dom0Store

DOMID_BACKEND = 0


class DeviceExists(Exception):
    """libxl's ERROR_DEVICE_EXISTS: the frontend directory is already there."""


def frontend_path(domid: int, kind: str, devid: int) -> str:
    return f"/local/domain/{domid}/device/{kind}/{devid}"


def backend_path(domid: int, kind: str, devid: int, backend_domid: int = DOMID_BACKEND) -> str:
    return f"/local/domain/{backend_domid}/backend/{kind}/{domid}/{devid}"


def libxl_path(domid: int, kind: str, devid: int) -> str:
    return f"/libxl/{domid}/device/{kind}/{devid}"


def _rm(t, path: str) -> None:
    try:
        t.rm(path)
    except XenstoreError as err:
        if err.name != "ENOENT":
            raise


def device_generic_add(store: "Dom0Store", domid: int, kind: str, devid: int, back: dict[str, str],
                       front: dict[str, str], ro_front: Optional[dict[str, str]] = None,
                       backend_kind: Optional[str] = None, backend_domid: int = DOMID_BACKEND) -> None:
    """libxl__device_add's store part: `back`/`front` get the generic entries (frontend-id, online, state /
    backend-id, state) unless the caller set them, then libxl__device_generic_add in one transaction
    (retried on EAGAIN). DeviceExists if the frontend directory exists already."""
    backend_kind = backend_kind or kind
    fe = frontend_path(domid, kind, devid)
    be = backend_path(domid, backend_kind, devid, backend_domid)
    lx = libxl_path(domid, kind, devid)
    bents = {"frontend-id": str(domid), "online": "1", "state": str(XenbusStateInitialising)}
    bents.update(back)
    fents = {"backend-id": str(backend_domid), "state": str(XenbusStateInitialising)}
    fents.update(front)
    frontend_perms = [Perm("n", domid), Perm("r", backend_domid)]
    backend_perms = [Perm("n", backend_domid), Perm("r", domid)]
    for attempt in range(16):
        try:
            with store.transaction() as t:
                if t.exists(fe):
                    raise DeviceExists(f"{kind} {devid} of d{domid} already exists in the store")
                _rm(t, lx)
                t.write(f"{lx}/frontend", fe)
                t.write(f"{lx}/backend", be)
                _rm(t, fe)
                t.mkdir(fe)
                t.set_perms(fe, frontend_perms)
                t.write(f"{fe}/backend", be)
                for key, value in fents.items():
                    t.write(f"{fe}/{key}", value)
                    t.set_perms(f"{fe}/{key}", frontend_perms)
                for key, value in (ro_front or {}).items():
                    t.write(f"{fe}/{key}", value)
                    t.set_perms(f"{fe}/{key}", backend_perms)
                _rm(t, be)
                t.mkdir(be)
                t.set_perms(be, backend_perms)
                t.write(f"{be}/frontend", fe)
                for key, value in bents.items():
                    t.write(f"{be}/{key}", value)
                for key, value in bents.items():
                    t.write(f"{lx}/{key}", value)
            return
        except XenstoreError as err:
            if err.name != "EAGAIN" or attempt == 15:
                raise


def path_cleanup(t, path: str) -> None:
    """libxl__xs_path_cleanup: remove `path`, then each parent that is left empty (no value, no children)."""
    try:
        t.rm(path)
    except XenstoreError:
        return
    while "/" in path.strip("/"):
        path = path.rsplit("/", 1)[0]
        try:
            if t.read(path) != b"" or t.ls(path):
                return
            t.rm(path)
        except XenstoreError:
            return


def device_destroy(store: "Dom0Store", domid: int, kind: str, devid: int) -> None:
    """libxl__device_destroy: remove the frontend, backend and libxl directories (the backend's watch sees
    its directory go)."""
    lx = libxl_path(domid, kind, devid)
    try:
        be = store.read(f"{lx}/backend").decode("utf-8", "replace")
    except XenstoreError:
        be = backend_path(domid, kind, devid)
    for attempt in range(16):
        try:
            with store.transaction() as t:
                for path in (frontend_path(domid, kind, devid), be, lx):
                    path_cleanup(t, path)
            return
        except XenstoreError as err:
            if err.name != "EAGAIN" or attempt == 15:
                raise


def devices_of(store: "Dom0Store", domid: int) -> list[tuple[str, int]]:
    """(kind, devid) of every device libxl added to `domid` (its /libxl/<domid>/device directory)."""
    out = []
    base = f"/libxl/{domid}/device"
    try:
        kinds = store.ls(base)
    except XenstoreError:
        return []
    for kind in kinds:
        try:
            devids = store.ls(f"{base}/{kind}")
        except XenstoreError:
            continue
        out.extend((kind, int(d)) for d in devids if d.isdigit())
    return sorted(out)


def devices_destroy(store: "Dom0Store", domid: int) -> None:
    """libxl__devices_destroy: every device of the domain goes."""
    for kind, devid in devices_of(store, domid):
        device_destroy(store, domid, kind, devid)
