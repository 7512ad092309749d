"""The initial tree a toolstack writes for a new PV domain, after libxl (libxl__domain_make, libxl__build_post,
the primary console's device_add), with libxl's permissions:

- roperm  `n0 r<domid>`: dom0 owns, the guest may read (the domain directory, vm, cpu, memory, device, control);
- rwperm  `n<domid>`:    the guest owns (control/shutdown and the feature-* flags it answers, data, drivers,
                          feature, attr, error, device/suspend/event-channel);
- noperm  `n0`:          dom0 only (/libxl/<domid>).
It runs as one transaction, as libxl's does, so watchers see a complete domain.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Union

from .dom0 import Dom0Store, Dom0Transaction
from .errors import XenstoreError
from .perms import Perm
from .store import ROOT_CALLER, Store

if TYPE_CHECKING:
    from .daemon import XenstoreDaemon

#: libxl's LIBXL_XENCONSOLE_LIMIT
XENCONSOLE_LIMIT = 1048576


class _Writer(Protocol):
    def write(self, path: str, value: bytes | str) -> None: ...
    def set_perms(self, path: str, perms: list[Perm]) -> None: ...
    def rm(self, path: str) -> None: ...
    def exists(self, path: str) -> bool: ...


class _StoreWriter:
    """Adapter so populate_domain also works on a bare Store (tests, tools)."""

    def __init__(self, store: Store) -> None:
        self.store, self.caller = store, ROOT_CALLER

    def write(self, path: str, value: bytes | str) -> None:
        self.store.write(self.caller, path, value.encode() if isinstance(value, str) else value)

    def set_perms(self, path: str, perms: list[Perm]) -> None:
        self.store.set_perms(self.caller, path, tuple(perms))

    def rm(self, path: str) -> None:
        self.store.rm(self.caller, path)

    def exists(self, path: str) -> bool:
        return self.store.exists(path)


def _writer(target: Union["XenstoreDaemon", Dom0Store, Dom0Transaction, Store]) -> _Writer:
    if isinstance(target, Store):
        return _StoreWriter(target)
    if isinstance(target, (Dom0Store, Dom0Transaction)):
        return target
    return target.dom0            # the daemon: write as dom0


def populate_dom0(target: Union["XenstoreDaemon", "Dom0Store", "Store"]) -> None:
    """/local/domain/0 as xen-init-dom0 leaves it (idempotent)."""
    w = _writer(target)
    if not w.exists("/local/domain/0/domid"):
        w.write("/local/domain/0/domid", "0")
        w.write("/local/domain/0/name", "Domain-0")
        w.set_perms("/local/domain/0", [Perm("n", 0)])


def populate_domain(store_or_daemon: Union["XenstoreDaemon", "Dom0Store", "Store"], domid: int, *, name: str,
                    uuid: str, memory_kib: int, store_port: int, store_mfn: int, console_port: int,
                    console_mfn: int, vcpus: int = 1) -> None:
    """Write /local/domain/<domid>, /vm/<uuid>, /libxl/<domid> and dom0's console backend directory."""
    populate_dom0(store_or_daemon)
    base = _writer(store_or_daemon)
    for attempt in range(16):
        try:
            if isinstance(base, Dom0Store):
                with base.transaction() as t:
                    _populate(t, domid, name, uuid, memory_kib, store_port, store_mfn, console_port,
                              console_mfn, vcpus)
            else:
                _populate(base, domid, name, uuid, memory_kib, store_port, store_mfn, console_port,
                          console_mfn, vcpus)
            return
        except XenstoreError as err:
            if err.name != "EAGAIN" or attempt == 15:
                raise


def _populate(w: _Writer, domid: int, name: str, uuid: str, memory_kib: int, store_port: int,
              store_mfn: int, console_port: int, console_mfn: int, vcpus: int) -> None:
    dom = f"/local/domain/{domid}"
    vm = f"/vm/{uuid}"
    libxl = f"/libxl/{domid}"
    roperm = [Perm("n", 0), Perm("r", domid)]
    rwperm = [Perm("n", domid)]
    noperm = [Perm("n", 0)]

    def mknod(path: str, perms: list[Perm]) -> None:
        w.write(path, b"")
        w.set_perms(path, perms)

    # libxl__domain_make
    for path, perms in ((dom, roperm), (vm, roperm), (libxl, noperm)):
        try:
            w.rm(path)
        except XenstoreError as err:  # libxl ignores it too: the parent may not exist yet
            if err.name != "ENOENT":
                raise
        mknod(path, perms)
    mknod(f"{libxl}/device", noperm)
    w.write(f"{dom}/vm", vm)
    w.write(f"{dom}/name", name)
    for sub in ("cpu", "memory", "device", "control"):
        mknod(f"{dom}/{sub}", roperm)
    for sub in ("control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                "control/feature-suspend", "control/sysrq", "device/suspend/event-channel", "data",
                "drivers", "feature", "attr", "error"):
        mknod(f"{dom}/{sub}", rwperm)
    w.write(f"{vm}/uuid", uuid)
    w.write(f"{vm}/name", name)
    w.write(f"{dom}/control/platform-feature-multiprocessor-suspend", "1")
    w.write(f"{dom}/control/platform-feature-xs_reset_watches", "1")
    w.write(f"{libxl}/type", "pv")
    # libxl__build_post
    w.write(f"{dom}/memory/static-max", str(memory_kib))
    w.write(f"{dom}/memory/target", str(memory_kib))
    w.write(f"{dom}/memory/videoram", "0")
    w.write(f"{dom}/domid", str(domid))
    w.write(f"{dom}/store/port", str(store_port))
    w.write(f"{dom}/store/ring-ref", str(store_mfn))
    for i in range(vcpus):
        w.write(f"{dom}/cpu/{i}/availability", "online")
    # the primary console (libxl__device_console_add): frontend owned by the guest, backend by dom0
    front = f"{dom}/console"
    back = f"/local/domain/0/backend/console/{domid}/0"
    mknod(front, [Perm("n", domid), Perm("r", 0)])
    for key, value in (("backend", back), ("backend-id", "0"), ("limit", str(XENCONSOLE_LIMIT)),
                       ("type", "xenconsoled"), ("output", "pty"), ("tty", "")):
        w.write(f"{front}/{key}", value)
    for key, value in (("port", str(console_port)), ("ring-ref", str(console_mfn))):
        w.write(f"{front}/{key}", value)
        w.set_perms(f"{front}/{key}", roperm)
    mknod(back, [Perm("n", 0), Perm("r", domid)])
    for key, value in (("frontend", front), ("frontend-id", str(domid)), ("online", "1"), ("state", "1"),
                       ("protocol", "vt100")):
        w.write(f"{back}/{key}", value)
