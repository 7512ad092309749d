"""A guest driven hypercall by hypercall from a test: a domain built from the selftest image (scenario
`hang`, never run), whose vCPU makes each request through the real entry point (hypercall.dispatch, what
the syscall hook calls) with its arguments placed in the guest's own memory, as a guest kernel would.

Guest memory is written the way the guest could: through its own mappings (AddressSpace, which honours
the page tables' present/RW/user bits), except the argument page, which the tests keep mapped."""
from __future__ import annotations

import struct
from typing import Optional

from miniguest import Domain
from miniguest.abi.xen import DOMID_SELF
from miniguest.hypervisor.hypercall import dispatch

from guestlib import SELFTEST

PAGE = 4096
HYPERVISOR_mmu_update = 1
HYPERVISOR_update_va_mapping = 14
HYPERVISOR_memory_op = 12
HYPERVISOR_grant_table_op = 20
HYPERVISOR_mmuext_op = 26
MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L2_TABLE, MMUEXT_PIN_L3_TABLE, MMUEXT_PIN_L4_TABLE = 0, 1, 2, 3
MMUEXT_UNPIN_TABLE = 4
MMUEXT_NEW_BASEPTR = 5
MMUEXT_NEW_USER_BASEPTR = 15
MMUEXT_CLEAR_PAGE = 16
MMUEXT_COPY_PAGE = 17
MMU_NORMAL_PT_UPDATE = 0
MMU_PT_UPDATE_PRESERVE_AD = 2
UVMF_INVLPG = 2
PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D = 1, 2, 4, 0x20, 0x40
RW = PTE_P | PTE_RW | PTE_A | PTE_D        # what a guest writes for a writable mapping
RO = PTE_P | PTE_A


class HvGuest:
    """See the module docstring. `pool` are free, writable-mapped pages past the boot stack for the test to
    use as page tables or data; `arg_va` is the page hypercall arguments go in."""

    def __init__(self, pool: int = 16, **options) -> None:
        self.dom = Domain.from_elf(SELFTEST, cmdline="hang", **options)
        self.vcpu = self.dom.vcpus[0]
        lay = self.dom.layout
        self.arg_va = lay.stack + 16 * PAGE
        self.pool_va = [lay.stack + (32 + i) * PAGE for i in range(pool)]
        self.pool = [self.mfn_of(va) for va in self.pool_va]
        self.l4 = self.vcpu.guest_table

    # -- addresses ----------------------------------------------------------------------------------------
    def mfn_of(self, va: int) -> int:
        return self.dom.p2m[self.dom.layout.pfn(va)]

    def va_of(self, mfn: int) -> int:
        """The bootstrap-mapping VA of a pool frame."""
        return self.pool_va[self.pool.index(mfn)]

    # -- guest memory, as the guest reaches it ---------------------------------------------------------------
    def write(self, va: int, value: int) -> None:
        self.vcpu.mem.write_u64(va, value)

    def put_args(self, data: bytes, offset: int = 0) -> int:
        self.vcpu.mem.write(self.arg_va + offset, data)
        return self.arg_va + offset

    def read_arg(self, offset: int, fmt: str) -> tuple:
        return struct.unpack(fmt, self.vcpu.mem.read(self.arg_va + offset, struct.calcsize(fmt)))

    # -- hypercalls -----------------------------------------------------------------------------------------
    def call(self, nr: int, *args: int) -> Optional[int]:
        args = tuple(a & (2 ** 64 - 1) for a in args) + (0,) * (5 - len(args))
        return dispatch(self.vcpu, nr, *args)

    def mmu_update(self, *reqs: tuple[int, int], done: bool = False):
        ptr = self.put_args(b"".join(struct.pack("<QQ", p, v) for p, v in reqs) + struct.pack("<I", 0xFFFF))
        pdone = ptr + 16 * len(reqs)
        rc = self.call(HYPERVISOR_mmu_update, ptr, len(reqs), pdone, DOMID_SELF)
        return (rc, self.read_arg(16 * len(reqs), "<I")[0]) if done else rc

    def pte(self, table: int, index: int, value: int, cmd: int = MMU_NORMAL_PT_UPDATE) -> int:
        return self.mmu_update(((table << 12) + index * 8 + cmd, value))

    def mmuext(self, cmd: int, arg1: int = 0, arg2: int = 0) -> int:
        ptr = self.put_args(struct.pack("<I4xQQ", cmd, arg1, arg2))
        return self.call(HYPERVISOR_mmuext_op, ptr, 1, 0, DOMID_SELF)

    def pin(self, level: int, mfn: int) -> int:
        return self.mmuext(MMUEXT_PIN_L1_TABLE + level - 1, mfn)

    def unpin(self, mfn: int) -> int:
        return self.mmuext(MMUEXT_UNPIN_TABLE, mfn)

    def uvm(self, va: int, value: int, flags: int = UVMF_INVLPG) -> int:
        return self.call(HYPERVISOR_update_va_mapping, va, value, flags)

    def unmap(self, mfn: int) -> int:
        """Drop the pool frame's bootstrap mapping (its writable type reference goes with it)."""
        return self.uvm(self.va_of(mfn), 0)

    def map_ro(self, mfn: int) -> int:
        return self.uvm(self.va_of(mfn), (mfn << 12) | RO)

    def remap(self, mfn: int) -> int:
        return self.uvm(self.va_of(mfn), (mfn << 12) | RW)

    def close(self) -> None:
        self.dom.close()
