"""console_io: the hypervisor console (Xen's serial console / `xl dmesg`), as a debug build of Xen offers
it to a domU: writes show up as the domain's hypervisor-console output, reads take bytes typed at it."""
from __future__ import annotations

from typing import TYPE_CHECKING

from miniguest.abi.xen import CONSOLEIO_read, CONSOLEIO_write, HYPERVISOR_console_io
from miniguest.hypervisor.hypercall import UnknownSubop, hypercall

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

CHUNK = 4096


@hypercall(HYPERVISOR_console_io, 3, subop_arg=0, subop_names={CONSOLEIO_write: "write", CONSOLEIO_read: "read"})
def console_io(vcpu: "Vcpu", cmd: int, count: int, buffer: int) -> int:
    count &= 0xFFFFFFFF           # `unsigned int count` in Xen
    if cmd == CONSOLEIO_write:
        # Like Xen: output chunk by chunk, so a fault part-way leaves what was already written.
        while count:
            n = min(count, CHUNK - (buffer & (CHUNK - 1)))
            data = vcpu.mem.read(buffer, n)
            vcpu.domain.hv_console_write(data)
            buffer += n
            count -= n
        return 0
    if cmd == CONSOLEIO_read:
        data = vcpu.domain.hv_console_read(count)
        if data:
            vcpu.mem.write(buffer, data)
        return len(data)
    raise UnknownSubop(cmd)

