"""The toolstack (what libxl and xl do): create a domain from a kernel and connect dom0's daemons to it.

It parses the kernel, runs the domain builder, then plays xenconsoled (the console ring) and xenstored (the
store ring, with the initial tree libxl writes). Backends only get what a real daemon gets: the shared page
(a foreign mapping) and the dom0 end of the event channel.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Sequence, Union

from miniguest import samples
from miniguest.backends.blkback import Blkback
from miniguest.backends.console import HV, RING, ConsoleBackend, ConsoleLog
from miniguest.backends.xenbus import BUS_SERVICE, XenbusBackendBus
from miniguest.backends.xenstore import Dom0Store, XenstoreDaemon, populate_domain
from miniguest.hypervisor.host import Domain, DomainConfig, Host
from miniguest.hypervisor.save import Fields
from miniguest.toolstack.device import devices_destroy
from miniguest.toolstack.disk import (DiskError, DiskSpec, device_disk_add, parse_disk_spec, prepare_disk,
                                      release_disk)
from miniguest.toolstack.dom_builder import build_domain
from miniguest.toolstack.layout import Layout
from miniguest.toolstack.libelf import ImageError, KernelImage, parse_kernel, read_image_file
from miniguest.toolstack.network import add_vifs
from miniguest.toolstack.symbols import Symbols


class Guest(Domain):
    """A domain as the toolstack made it: the hypervisor's Domain plus what dom0 keeps about it -- the kernel
    image and start-of-day layout it was built from, and the daemons serving it (xenconsoled's backend and
    the merged console log, xenstored and dom0's handle on the store). `miniguest.Domain` is this class."""

    image: Optional[KernelImage]
    layout: Optional[Layout]

    def __init__(self, config: DomainConfig, host: Host, domid: int) -> None:
        super().__init__(config, host, domid)
        self.image = None
        self.layout = None
        self.start_info_va = 0
        self.console: Optional[ConsoleLog] = None
        self.console_backend: Optional[ConsoleBackend] = None
        self.xenstored: Optional[XenstoreDaemon] = None
        self.store: Optional[Dom0Store] = None
        self.disks: list[DiskSpec] = []

    @classmethod
    def from_elf(cls, path: str, **options: Any) -> "Guest":
        """Build a domain from a PV kernel (a path, or the name of a bundled sample: "hello") with the
        default dom0 daemons attached (console, xenstore). Options: see create_domain (memory_mib, cmdline,
        module (bytes or path), name, scramble_mfns, max_instructions, max_time (virtual seconds),
        console_output: a callable receiving console bytes, ...)."""
        return create_domain(path, **options)

    def destroy_devices(self) -> None:
        """libxl__devices_destroy: remove every split-driver device of the domain from the store."""
        if self.store is not None:
            devices_destroy(self.store, self.domid)

    def close(self) -> None:
        self.destroy_devices()
        bus = self.host.services.get(BUS_SERVICE)
        if isinstance(bus, XenbusBackendBus):
            bus.reporters.pop(self.domid, None)
        for spec in self.disks:
            release_disk(spec)
        super().close()

    # -- saved state: the domain's, plus dom0's backends (hypervisor/save.py) -----------------------------
    def save(self) -> tuple[dict, dict[str, bytes]]:
        record, sections = super().save()
        assert self.console_backend and self.console and self.xenstored
        record["backends"] = {"console": {"backend": self.console_backend.save(), "log": self.console.save()},
                              "xenstore": self.xenstored.save_domain(self.domid)}
        return record, sections

    def restore(self, record: Fields, sections: dict[str, bytes], memory_image: bytes) -> None:
        super().restore(record, sections, memory_image)
        assert self.console_backend and self.console and self.xenstored
        backends = record.sub("backends")
        console = backends.sub("console")
        self.console_backend.restore(console.sub("backend"))
        self.console.restore(console.sub("log"))
        self.xenstored.restore_domain(self.domid, backends.sub("xenstore"))


def prepare_disks(disks: Sequence[Union[str, DiskSpec]]) -> list[DiskSpec]:
    """Parse and check every disk (the hotplug step); DiskError for the first that cannot be used."""
    specs: list[DiskSpec] = []
    try:
        for disk in disks:
            spec = parse_disk_spec(disk) if isinstance(disk, str) else disk
            if any(s.devid == spec.devid for s in specs):
                raise DiskError(f"disk {spec.target}: vdev {spec.vdev} is given to another disk already")
            specs.append(prepare_disk(spec))
    except BaseException:
        for spec in specs:
            release_disk(spec)
        raise
    return specs


def _xenstored(host: Host) -> XenstoreDaemon:
    daemon = host.services.get("xenstored")
    if not isinstance(daemon, XenstoreDaemon):
        daemon = XenstoreDaemon()
        daemon.hypervisor_has_domain = lambda domid: domid in host.domains
        host.services["xenstored"] = daemon
    return daemon


DEFAULT_MEMORY_MIB = 32              # xl's default
MAX_MEMORY_MIB = 4096


def default_memory_mib(image: KernelImage) -> int:
    """The memory a domain gets when none is asked for: xl's 32 MiB, or -- for a kernel whose image alone
    does not fit there, like Debian's Linux (62 MiB from its VIRT_BASE) -- twice the image, in 32 MiB steps,
    so that the kernel has room to run."""
    image_mib = -(-(image.virt_kend - image.virt_base) // (1 << 20))
    if image_mib + 4 <= DEFAULT_MEMORY_MIB:
        return DEFAULT_MEMORY_MIB
    return min(MAX_MEMORY_MIB, -(-2 * image_mib // 32) * 32)


def create_domain(kernel: str, *, memory_mib: Optional[int] = None, cmdline: str = "",
                  module: Union[bytes, str, None] = None, name: Optional[str] = None,
                  scramble_mfns: bool = False, max_instructions: Optional[int] = None,
                  console_output: Optional[Callable[[bytes], None]] = None, host: Optional[Host] = None,
                  store_socket: Optional[str] = None, wallclock: Optional[tuple[int, int]] = None,
                  poison_memory: bool = False, realtime: bool = False, image_data: Optional[bytes] = None,
                  maxmem: Optional[int] = None, uuid: Optional[str] = None, max_time: Optional[float] = None,
                  vifs: Optional[list] = None, disks: Sequence[Union[str, DiskSpec]] = (),
                  **extra: Any) -> Guest:
    # image_data: the kernel file's bytes (snapshot restore), else read. A bzImage may decompress to at most
    # the guest's memory (without a memory size: the most a domain may have). disks: xl DISKSPEC strings or
    # DiskSpecs, checked (the block hotplug step) before anything is built: DiskError (one line) for an image
    # the guest cannot have.
    if image_data is None and not os.path.exists(kernel):
        kernel = samples.path(kernel) or kernel          # a bundled sample by name ("hello")
    if max_time is not None and not max_time >= 0:
        raise ImageError(f"the time limit must be a number of seconds >= 0 (got {max_time})")
    limit = MAX_MEMORY_MIB if memory_mib is None else max(memory_mib, 1)
    image = parse_kernel(kernel, image_data, max_size=limit << 20)
    if memory_mib is None:
        memory_mib = default_memory_mib(image)
    if isinstance(module, str):
        module = read_image_file(module, "module")
    if memory_mib <= 0 or memory_mib > 4096:
        raise ImageError(f"memory must be between 1 and 4096 MiB (got {memory_mib})")
    if maxmem is not None and not 0 <= maxmem <= 4096:
        raise ImageError(f"maxmem must be between 0 and 4096 MiB (got {maxmem})")
    config = DomainConfig(name=name or os.path.splitext(os.path.basename(kernel))[0], memory_mib=memory_mib,
                          cmdline=cmdline, module=module, scramble_mfns=scramble_mfns,
                          max_instructions=max_instructions, poison_memory=poison_memory, realtime=realtime,
                          max_memory_mib=maxmem, uuid=uuid,
                          max_time_ns=None if max_time is None else round(max_time * 1e9),
                          extra=dict(extra))
    if wallclock is not None:
        config.wallclock = wallclock
    disk_specs = prepare_disks(disks)
    try:
        domain, builder = build_domain(image, config, host, Guest)
    except BaseException:
        for spec in disk_specs:
            release_disk(spec)
        raise
    assert isinstance(domain, Guest)
    domain.disks = disk_specs
    if wallclock is None and realtime:
        # --realtime: the guest's time of day is the host's, as Xen's wallclock is dom0's (the time of day
        # at system time 0, which is when the domain's clock started).
        config.wallclock = divmod(time.time_ns() - domain.clock.now_ns(), 1_000_000_000)
        domain.set_wallclock(*config.wallclock)
    host = domain.host
    domain.symbols = Symbols.from_elf(image.elf)

    # xenconsoled: the console ring, merged with the hypervisor console for the user.
    log = ConsoleLog([console_output] if console_output else [])
    domain.console = log
    domain.hv_console_sink = lambda data: log.write(HV, data)
    console_mfn = domain.p2m[domain.layout.pfn(domain.layout.console)]
    page = host.map_foreign(domain.domid, console_mfn)

    def ring_output(data: bytes) -> None:
        domain.emit("console", source="ring", data=data)
        log.write(RING, data)

    local: list[int] = []
    backend = ConsoleBackend(page, lambda: host.dom0_evtchn.notify(local[0]), ring_output, domain.log)
    local.append(host.dom0_evtchn.bind_interdomain(domain.domid, builder.console_evtchn, backend.on_event))
    domain.console_backend = backend
    domain.on_idle.append(log.flush)
    domain.on_final.append(lambda d: log.flush())

    # xenstored: introduce the domain and write its initial tree.
    daemon = _xenstored(host)
    store_mfn = domain.p2m[domain.layout.pfn(domain.layout.xenstore)]
    store_page = host.map_foreign(domain.domid, store_mfn)
    store_local: list[int] = []
    conn = daemon.introduce_domain(domain.domid, store_page, lambda: host.dom0_evtchn.notify(store_local[0]))
    store_local.append(host.dom0_evtchn.bind_interdomain(domain.domid, builder.store_evtchn, conn.on_event))
    populate_domain(daemon, domain.domid, name=config.name, uuid=domain.uuid, memory_kib=memory_mib * 1024,
                    store_port=builder.store_evtchn, store_mfn=store_mfn, console_port=builder.console_evtchn,
                    console_mfn=console_mfn)
    domain.xenstored = daemon
    domain.store = daemon.dom0
    # dom0's xenbus for split-driver backends: what they report about this domain goes to its log. When the
    # domain ends, its devices go (as xl destroys a domain that shut down): the backends let go of its grants
    # and event channels and flush what it wrote.
    bus = XenbusBackendBus.of(host, daemon.dom0)
    bus.reporters[domain.domid] = domain.log
    domain.on_final.append(lambda d: d.destroy_devices())
    if vifs:
        add_vifs(domain, vifs)          # network interfaces (toolstack/network.py): ConfigError if unusable
    if disk_specs:
        bus.register_driver(Blkback())
        for spec in disk_specs:
            device_disk_add(daemon.dom0, domain.domid, spec)
    if store_socket:
        daemon.listen_unix(store_socket, host.loop)
    return domain
