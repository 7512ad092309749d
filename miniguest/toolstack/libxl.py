"""The toolstack (what libxl and xl do): create a domain from a kernel and connect dom0's daemons to it.

It parses the kernel, runs the domain builder, then plays xenconsoled (the console ring) and xenstored (the
store ring, with the initial tree libxl writes). Backends only get what a real daemon gets: the shared page
(a foreign mapping) and the dom0 end of the event channel.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

from miniguest.backends.console import HV, RING, ConsoleBackend, ConsoleLog
from miniguest.toolstack.symbols import Symbols
from miniguest.hypervisor.domain import Domain, DomainConfig
from miniguest.hypervisor.host import Host
from miniguest.toolstack.dom_builder import build_domain
from miniguest.toolstack.libelf import ImageError, parse_kernel, read_image_file


def _xenstored(host: Host):
    from miniguest.backends.xenstore import XenstoreDaemon
    daemon = host.services.get("xenstored")
    if daemon is None:
        daemon = XenstoreDaemon()
        host.services["xenstored"] = daemon
    return daemon


def create_domain(kernel: str, *, memory_mib: int = 32, cmdline: str = "",
                  module: Union[bytes, str, None] = None, name: Optional[str] = None,
                  scramble_mfns: bool = False, max_instructions: Optional[int] = None,
                  console_output: Optional[Callable[[bytes], None]] = None, host: Optional[Host] = None,
                  store_socket: Optional[str] = None, wallclock: Optional[tuple[int, int]] = None,
                  poison_memory: bool = False, realtime: bool = False, image_data: Optional[bytes] = None,
                  maxmem: Optional[int] = None, uuid: Optional[str] = None, **extra: Any) -> Domain:
    # image_data: the kernel file's bytes (snapshot restore), else read. A bzImage may decompress to at most
    # the guest's memory.
    image = parse_kernel(kernel, image_data, max_size=max(memory_mib, 1) << 20)
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
                          extra=dict(extra))
    if wallclock is not None:
        config.wallclock = wallclock
    domain, builder = build_domain(image, config, host)
    if wallclock is None and realtime:
        # --realtime: the guest's time of day is the host's, as Xen's wallclock is dom0's (the time of day
        # at system time 0, which is when the domain's clock started).
        import time
        from miniguest.hypervisor.common.time import set_wallclock
        config.wallclock = divmod(time.time_ns() - domain.clock.now_ns(), 1_000_000_000)
        set_wallclock(domain, *config.wallclock)
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
    from miniguest.backends.xenstore import populate_domain
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
    if store_socket:
        daemon.listen_unix(store_socket, host.loop)
    return domain
