"""A PV vCPU on Unicorn: long mode, the guest's own page tables, guest kernel and user at CPL3.

The CPU never runs hypervisor code except one `iretq` at start-of-day that drops it to CPL3 with Xen's flat
selectors. From then on everything the guest cannot do itself reaches Python through bounded hooks:
`syscall` (a hypercall from guest kernel mode, a system call from guest user mode), CPU exceptions (bounced
to the guest's trap table with Xen's frame, or emulated when they are privileged instructions Xen emulates for
PV), `cpuid`, `rdtsc`, `in`/`out` and invalid opcodes. There is no per-instruction or per-block Python hook:
the only block hook is the C clock in _vclock.c.
"""
from __future__ import annotations

import ctypes
import struct
from types import SimpleNamespace
from typing import TYPE_CHECKING, Optional

from unicorn import (UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INSN_INVALID, UC_HOOK_INTR, UC_MODE_64,
                     UC_PROT_ALL, Uc, UcError)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from miniguest.abi.arch_x86 import (ERROR_CODE_VECTORS, FLAT_KERNEL_CS, FLAT_KERNEL_SS, GDT_SIZE,
                                    MSR_EFER, PFEC_user_mode, TI_MASK_EVENTS, TRAP_gp_fault, TRAP_invalid_op,
                                    TRAP_no_device, TRAP_page_fault)
from miniguest.abi.shared_info import (VCPU_INFO_SIZE, VI_ARCH_CR2, VI_UPCALL_MASK, VI_UPCALL_PENDING)
from miniguest.abi.xen import VMASST_TYPE_architectural_iopl
from miniguest.hypervisor import vcpu_regs
from miniguest.hypervisor.common.time import VcpuTimer
from miniguest.hypervisor.crash import GuestCrash
from miniguest.hypervisor.hypercall import dispatch
from miniguest.hypervisor.pv import emul_priv_op as privop
from miniguest.hypervisor.pv.emul_inv_op import emulate_invalid_op
from miniguest.hypervisor.pv.ro_page_fault import pv_ro_page_fault
from miniguest.hypervisor.pv.traps import TrapEntry, software_interrupt, sysenter_entry
from miniguest.hypervisor.ram import AddressSpace, GuestFault
from miniguest.hypervisor.save import Fields, StateError
from miniguest.hypervisor.unicorn_x86 import RegBatch, hook_rdtsc, hook_syscall_raw, read_exception_state
from miniguest.hypervisor.x86.hw_breakpoints import HwBreakpoints
from miniguest.hypervisor.x86.cpu import (CR0_GUEST, CR4_REAL, DR6_DEFAULT, DR7_DEFAULT, EFER_GUEST,
                                          EFLAGS_CLEAR_ON_BOUNCE, EFLAGS_DF, EFLAGS_IF, EFLAGS_IOPL,
                                          PV_CR4_GUEST_MASK)
from miniguest.hypervisor.x86.xstate import load_xcr0, valid_xcr0, xcr0_max
from miniguest.hypervisor.x86 import vcpu_context
from miniguest.hypervisor.x86.page_types import PGT_l4, PGT_seg_desc, PGT_validated, PGT_writable
from miniguest.hypervisor.x86.xen_area import ENTRY_STUB_VA, GDT_VIRT_START, HV_STACK_VA, NEVER_EXECUTED_VA

if TYPE_CHECKING:
    from miniguest.hypervisor.domain import Domain

_U64 = struct.Struct("<Q")

GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
             "r14", "r15", "rip", "rflags")
GPR_IDS = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RSI,
           X.UC_X86_REG_RDI, X.UC_X86_REG_RBP, X.UC_X86_REG_RSP, X.UC_X86_REG_R8, X.UC_X86_REG_R9,
           X.UC_X86_REG_R10, X.UC_X86_REG_R11, X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14,
           X.UC_X86_REG_R15, X.UC_X86_REG_RIP, X.UC_X86_REG_EFLAGS)


# The PV vCPU state a save carries, by kind (Vcpu.save). An attribute that is in none of these lists is a new
# piece of state save() does not know yet: tests/regress/test_snapshot.py fails until it is added.
SAVED_INTS = ("event_callback", "failsafe_callback", "syscall_callback", "nmi_callback", "kernel_ss", "kernel_sp",
              "guest_table", "guest_table_user", "gs_base_kernel", "gs_base_user", "fs_base", "gdt_ents",
              "vcpu_info_offset", "gs_sel_user", "runstate_area", "iopl")
# Saved when set (absent from older files: 0).
SAVED_OPTIONAL_INTS = ("time_info_guest", "tsc_aux")
SAVED_BOOLS = ("kernel_mode", "syscall_mask_events", "failsafe_mask_events", "cr0_ts", "started", "blocked",
               "hold_events", "cpuid_faulting")
SAVED_SPECIAL = ("trap_table", "gdt_frames", "vcpu_info_view", "vcpu_info_mfn", "poll_ports", "poll_deadline",
                 "compat_callbacks", "ldt", "intercepted", "timer", "cr4_ctl", "debugreg", "xcr0",
                 "time_info_guest", "tsc_aux")
# Live objects and state that only exists inside a run slice or a hypercall (empty between slices).
NOT_SAVED = ("domain", "id", "uc", "hc_regs", "gprs", "frame_regs", "aspace", "in_syscall_hook", "stop_reason",
             "hw_bp",
             "in_multicall", "pending_intercepts")
PAGE_SIZE = 4096


class Vcpu:
    def __init__(self, domain: "Domain", vcpu_id: int) -> None:
        self.domain = domain
        self.id = vcpu_id
        mem = domain.mem
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map_ptr(0, mem.size, UC_PROT_ALL, mem.address)
        self.hc_regs = RegBatch(uc, (X.UC_X86_REG_RAX, X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX,
                                     X.UC_X86_REG_R10, X.UC_X86_REG_R8))
        self.gprs = RegBatch(uc, GPR_IDS)
        self._uch = uc._uch
        self._rax = ctypes.c_uint64()
        self._rax_ref = ctypes.byref(self._rax)
        self.frame_regs = RegBatch(uc, (X.UC_X86_REG_RIP, X.UC_X86_REG_RSP, X.UC_X86_REG_EFLAGS,
                                        X.UC_X86_REG_RCX, X.UC_X86_REG_R11))
        # PV state (Xen's struct pv_vcpu).
        self.kernel_mode = True
        self.trap_table = [TrapEntry() for _ in range(256)]
        self.event_callback = 0
        self.failsafe_callback = 0
        self.syscall_callback = 0
        self.syscall_mask_events = False
        self.failsafe_mask_events = False
        self.nmi_callback = 0
        self.kernel_ss = FLAT_KERNEL_SS
        self.kernel_sp = 0
        self.guest_table = 0          # kernel L4 mfn
        self.guest_table_user = 0     # user L4 mfn (0: none)
        self.gs_base_kernel = 0
        self.gs_base_user = 0
        self.fs_base = 0
        self.cr0_ts = False
        self.cr4_ctl = 0              # the guest-controlled %cr4 bits (CR4_DE)
        self.debugreg = [0, 0, 0, 0, 0, 0, DR6_DEFAULT, DR7_DEFAULT]   # the guest's view of %dr0-7
        self.iopl = 0                 # Xen's virtual IOPL (0-3): PHYSDEVOP_set_iopl / architectural_iopl
        self.cpuid_faulting = False   # MSR_INTEL_MISC_FEATURES_ENABLES.CPUID_FAULTING
        self.xcr0 = 0                 # the guest's XCR0 (0: never set; the CPU then runs with x87|SSE)
        self.tsc_aux = 0              # MSR_TSC_AUX (rdtscp's ecx)
        self.time_info_guest = 0      # VCPUOP_register_vcpu_time_memory_area (0: none)
        self.gdt_frames: list[int] = []
        self.gdt_ents = 0
        self.vcpu_info_view: Optional[memoryview] = None   # None: the slot in shared_info
        self.vcpu_info_mfn = 0                              # the frame of a registered vcpu_info
        self.vcpu_info_offset = vcpu_id * VCPU_INFO_SIZE
        # Scheduling state.
        self.started = False
        self.blocked = False
        self.poll_ports: Optional[set[int]] = None
        self.poll_deadline: Optional[int] = None
        self.in_syscall_hook = False
        self.stop_reason: Optional[str] = None
        self.hold_events = False       # a debugger single-step holds event delivery
        self.in_multicall = False
        self.compat_callbacks: dict[int, tuple[int, bool]] = {}
        self.gs_sel_user = 0
        self.ldt = (0, 0)
        self.runstate_area = 0
        self.pending_intercepts: list[tuple[int, int, list[int]]] = []
        self.intercepted: set[int] = set()
        self.timer = VcpuTimer(self)
        self.aspace = AddressSpace(mem)
        self.hw_bp = HwBreakpoints(self)       # DR0-3/DR7 as hooks, derived from debugreg (re-armed)
        self._setup_cpu()
        self._install_hooks()

    # -- CPU set-up ---------------------------------------------------------------------------------------
    def _setup_cpu(self) -> None:
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_CR4, CR4_REAL)
        uc.reg_write(X.UC_X86_REG_CR0, CR0_GUEST & ~0x80000000)
        load_xcr0(self)
        uc.msr_write(MSR_EFER, EFER_GUEST)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT_VIRT_START, GDT_SIZE - 1, 0))
        # The FPU state a new vCPU starts with on Xen (FNINIT's control word, MXCSR's reset value: all
        # x87/SSE exceptions masked).
        uc.reg_write(X.UC_X86_REG_FPCW, 0x37F)
        uc.reg_write(X.UC_X86_REG_MXCSR, 0x1F80)

    def _install_hooks(self) -> None:
        uc = self.uc
        hook_syscall_raw(uc, self._on_syscall)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid_insn)
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        uc.hook_add(UC_HOOK_INSN, self._on_sysenter, None, 1, 0, X.UC_X86_INS_SYSENTER)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        hook_rdtsc(uc, self._on_rdtsc, X.UC_X86_INS_RDTSC)
        hook_rdtsc(uc, self._on_rdtscp, X.UC_X86_INS_RDTSCP)

    def start_of_day(self, entry: int, stack: int, start_info_va: int, l4_mfn: int) -> None:
        """Registers at entry (Xen's PV start-of-day): rsi = start_info, rsp = top of the boot stack, IF=1,
        CS/SS the flat kernel selectors. The first slice runs Xen's one `iretq` from the per-domain stub."""
        uc = self.uc
        self.guest_table = l4_mfn
        if not self.domain.m2p_strict:
            self.domain.xen.fill_ro_mpt(l4_mfn)     # as arch_set_info_guest does for the first CR3
        self.load_cr3(l4_mfn)
        uc.reg_write(X.UC_X86_REG_CR0, CR0_GUEST)
        frame = HV_STACK_VA
        for i, v in enumerate((entry, FLAT_KERNEL_CS, 0x202, stack, FLAT_KERNEL_SS)):
            self.domain.mem.write_u64(self.domain.xen.stack_mfn * 4096 + i * 8, v)
        uc.reg_write(X.UC_X86_REG_RSP, frame)
        uc.reg_write(X.UC_X86_REG_RSI, start_info_va)
        uc.reg_write(X.UC_X86_REG_RIP, ENTRY_STUB_VA)

    # -- registers ----------------------------------------------------------------------------------------
    def regs(self) -> dict[str, int]:
        return dict(zip(GPR_NAMES, self.gprs.read()))

    @property
    def rip(self) -> int:
        return self.uc.reg_read(X.UC_X86_REG_RIP)

    def set_rip(self, value: int) -> None:
        # Inside the syscall hook Unicorn adds the instruction length (2) once the hook returns.
        self.uc.reg_write(X.UC_X86_REG_RIP, (value - 2 if self.in_syscall_hook else value) & (2**64 - 1))

    def load_cr3(self, l4_mfn: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_CR3, l4_mfn << 12)     # also flushes Unicorn's TLB
        self.aspace.cr3 = l4_mfn << 12

    def flush_tlb(self) -> None:
        self.uc.reg_write(X.UC_X86_REG_CR3, self.aspace.cr3)

    @property
    def mem(self) -> AddressSpace:
        """Guest-virtual memory as the guest kernel sees it (hypercall arguments)."""
        return self.aspace

    # -- vcpu_info ----------------------------------------------------------------------------------------
    def vcpu_info(self) -> tuple[memoryview, int]:
        """Where this vCPU's vcpu_info is: (the page, the offset in it) -- its shared_info slot or the frame
        it registered (VCPUOP_register_vcpu_info)."""
        if self.vcpu_info_view is not None:
            return self.vcpu_info_view, self.vcpu_info_offset
        return self.domain.shared_info_view(), self.vcpu_info_offset

    @property
    def upcall_mask(self) -> int:
        view, off = self.vcpu_info()
        return view[off + VI_UPCALL_MASK]

    @upcall_mask.setter
    def upcall_mask(self, value: int) -> None:
        view, off = self.vcpu_info()
        view[off + VI_UPCALL_MASK] = value & 0xFF

    @property
    def guest_cr2(self) -> int:
        """The guest's %cr2: the one Xen keeps for it in vcpu_info.arch.cr2 (what `mov %cr2` returns)."""
        view, off = self.vcpu_info()
        return _U64.unpack_from(view, off + VI_ARCH_CR2)[0]

    @property
    def upcall_pending(self) -> int:
        view, off = self.vcpu_info()
        return view[off + VI_UPCALL_PENDING]

    def events_need_delivery(self) -> bool:
        view, off = self.vcpu_info()
        return bool(view[off + VI_UPCALL_PENDING]) and not view[off + VI_UPCALL_MASK]

    def mark_events_pending(self) -> None:
        """Xen's vcpu_mark_events_pending: set upcall_pending, wake the vCPU if it was blocked."""
        view, off = self.vcpu_info()
        if view[off + VI_UPCALL_PENDING]:
            return
        view[off + VI_UPCALL_PENDING] = 1
        if self.blocked and self.poll_ports is None:
            self.unblock()

    def poll_wakeup(self, port: int) -> None:
        if self.blocked and self.poll_ports is not None and port in self.poll_ports:
            self.unblock()

    def unblock(self) -> None:
        self.blocked = False
        self.poll_ports = None
        self.poll_deadline = None

    # -- bounce frames ------------------------------------------------------------------------------------
    def bounce(self, handler: int, error_code: Optional[int], mask_events: bool,
               rip: Optional[int] = None, frame: Optional[tuple[int, int, int, int]] = None) -> None:
        """Xen's create_bounce_frame: push {rcx, r11, [error code], rip, cs, rflags, rsp, ss} on the guest
        kernel stack (switching to the stack_switch stack from guest user mode) and enter `handler`.
        `frame` gives (rip, cs, rsp, ss) for the frame when Xen's entry path recorded its own (sysenter)."""
        cur_rip, rsp, rflags, rcx, r11 = self.frame_regs.read()
        if rip is None:
            # In the syscall hook, the hooked `syscall` has not advanced RIP yet.
            rip = cur_rip + 2 if self.in_syscall_hook else cur_rip
        saved_mask = self.upcall_mask
        if self.kernel_mode:
            cs = FLAT_KERNEL_CS & ~3        # tell the guest kernel it interrupted itself
            ss = FLAT_KERNEL_SS
            new_sp = rsp
        else:
            cs, ss = FLAT_KERNEL_CS, FLAT_KERNEL_SS
            new_sp = self.kernel_sp
            self.toggle_guest_mode()
        new_sp &= ~0xF
        frame_rflags = (rflags & ~EFLAGS_IF & ~EFLAGS_IOPL) | (0 if saved_mask else EFLAGS_IF)
        if self.domain.vm_assist & (1 << VMASST_TYPE_architectural_iopl):
            frame_rflags |= self.iopl << 12          # Xen folds the virtual IOPL into the frame
        words = [rcx, r11]
        if error_code is not None:
            words.append(error_code)
        if frame is not None:
            rip, cs, rsp, ss = frame
        words += [rip, cs | (saved_mask << 32), frame_rflags, rsp, ss]
        new_sp -= 8 * len(words)
        try:
            self.aspace.write(new_sp, b"".join(_U64.pack(w & (2**64 - 1)) for w in words))
        except GuestFault as f:
            raise GuestCrash(f"cannot write the exception frame at {f.va:#x} (guest stack fault)") from None
        if mask_events:
            self.upcall_mask = 1
        self.uc.reg_write(X.UC_X86_REG_RSP, new_sp)
        self.uc.reg_write(X.UC_X86_REG_EFLAGS, (rflags & ~EFLAGS_CLEAR_ON_BOUNCE) | EFLAGS_IF)
        self.set_rip(handler)

    def toggle_guest_mode(self) -> None:
        """Switch between guest kernel and guest user context: page tables and GS bases (Xen swaps them)."""
        if self.kernel_mode:
            self.gs_base_kernel = self.uc.msr_read(0xC0000101)
            self.uc.msr_write(0xC0000101, self.gs_base_user)
            self.kernel_mode = False
            self.load_cr3(self.guest_table_user)
        else:
            self.gs_base_user = self.uc.msr_read(0xC0000101)
            self.uc.msr_write(0xC0000101, self.gs_base_kernel)
            self.kernel_mode = True
            self.load_cr3(self.guest_table)

    def inject_exception(self, vector: int, error_code: Optional[int] = None, rip: Optional[int] = None,
                         cr2: Optional[int] = None) -> None:
        """Bounce a CPU exception to the guest's handler, or crash the domain if it has none."""
        ti = self.trap_table[vector]
        if vector == TRAP_page_fault and cr2 is not None:
            view, off = self.vcpu_info()
            _U64.pack_into(view, off + VI_ARCH_CR2, cr2)
            self.uc.reg_write(X.UC_X86_REG_CR2, cr2)
        if vector == TRAP_no_device and self.cr0_ts:
            # Xen's PV ABI: delivering #NM clears the guest's CR0.TS (classic-Xen kernels rely on it).
            self.cr0_ts = False
            self.uc.reg_write(X.UC_X86_REG_CR0, self.uc.reg_read(X.UC_X86_REG_CR0) & ~8)
        self.domain.trace_exception(self, vector, error_code, rip, cr2)
        if not ti.address:
            raise GuestCrash(f"unhandled exception {vector} with no handler in the trap table")
        self.bounce(ti.address, error_code if vector in ERROR_CODE_VECTORS else None,
                    bool(ti.flags & TI_MASK_EVENTS), rip)

    def deliver_events(self) -> bool:
        """At a return to the guest: if an upcall is due, bounce to the event callback (events masked)."""
        if self.hold_events or not self.events_need_delivery() or not self.event_callback:
            return False
        self.domain.trace_upcall(self)
        self.bounce(self.event_callback, None, True)
        return True

    # -- hooks --------------------------------------------------------------------------------------------
    def run_guarded(self, fn, *args):
        """Run hypervisor work for a hook; turn a guest crash or an internal error into domain state."""
        try:
            return fn(*args)
        except GuestCrash as c:
            self.domain.crash(str(c), self)
        except Exception as e:              # a bug in miniguest, never in the guest
            self.domain.internal_error(e, self)
        self.uc.emu_stop()
        return None

    def _on_syscall(self) -> None:
        self.in_syscall_hook = True
        try:
            self.run_guarded(self._syscall)
        finally:
            self.in_syscall_hook = False

    def _syscall(self) -> None:
        if not self.kernel_mode:
            self._user_syscall()
            return
        nr, a1, a2, a3, a4, a5 = self.hc_regs.read()
        result = dispatch(self, nr, a1, a2, a3, a4, a5)
        if result is not None:
            # The hot path: one direct C call instead of the binding's generic reg_write (~3x faster).
            self._rax.value = result & 0xFFFFFFFFFFFFFFFF
            uclib.uc_reg_write(self._uch, X.UC_X86_REG_RAX, self._rax_ref)
        if self.domain.running and not self.blocked:
            # Inline test of upcall_pending && !upcall_mask: most hypercalls return with nothing to deliver.
            view, off = self.vcpu_info()
            if view[off] and not view[off + 1]:
                self.deliver_events()

    def _user_syscall(self) -> None:
        """`syscall` from guest user mode: Xen enters the registered syscall callback in kernel mode with
        {rcx, r11, rip, cs, rflags, rsp, ss} on the kernel stack (rcx/r11 as the CPU sets them) and DF
        clear (the PV ABI's fixed SYSCALL_MASK). With no callback registered Xen injects #UD at the
        `syscall` instead (switch_to_kernel's syscall_no_callback)."""
        rip, _, rflags, _, _ = self.frame_regs.read()
        if not self.syscall_callback:
            self.inject_exception(TRAP_invalid_op, None, rip)
            self.deliver_events()
            return
        self.uc.reg_write(X.UC_X86_REG_RCX, rip + 2)
        self.uc.reg_write(X.UC_X86_REG_R11, rflags)
        self.bounce(self.syscall_callback, None, self.syscall_mask_events)
        self.uc.reg_write(X.UC_X86_REG_EFLAGS, self.uc.reg_read(X.UC_X86_REG_EFLAGS) & ~EFLAGS_DF)
        self.deliver_events()

    def _on_interrupt(self, uc: Uc, intno: int, _: object) -> None:
        self.run_guarded(self._interrupt, intno)

    def _interrupt(self, intno: int) -> None:
        error_code, is_int = read_exception_state(self.uc)
        rip = self.rip
        if is_int:
            software_interrupt(self, intno, rip)
        elif intno == TRAP_gp_fault and privop.emulate_gp(self, rip, error_code):
            pass
        elif intno == TRAP_page_fault and pv_ro_page_fault(self, rip, error_code):
            pass                                      # a store to one of its L1 tables, emulated (ptwr)
        else:
            cr2 = None
            if intno == TRAP_page_fault:
                cr2 = self.uc.reg_read(X.UC_X86_REG_CR2)
                if self.kernel_mode:
                    error_code &= ~PFEC_user_mode     # the guest kernel thinks it runs in ring 0
            self.inject_exception(intno, error_code, rip, cr2)
        self.after_exception()

    def after_exception(self) -> None:
        if self.domain.running:
            self.deliver_events()

    def _on_invalid_insn(self, uc: Uc, _: object) -> bool:
        self.run_guarded(emulate_invalid_op, self)
        return True

    def _on_sysenter(self, uc: Uc, _: object) -> None:
        # Unicorn runs this hook in place of the instruction, then adds its length (2) to RIP, as for syscall.
        self.in_syscall_hook = True
        try:
            self.run_guarded(sysenter_entry, self)
        finally:
            self.in_syscall_hook = False

    def _on_cpuid(self, uc: Uc, _: object) -> int:
        self.run_guarded(privop.cpuid_instruction, self)
        return 1

    def _on_rdtsc(self, uc: Uc) -> int:
        self.run_guarded(privop.emulate_rdtsc, self, False)
        return 1

    def _on_rdtscp(self, uc: Uc) -> int:
        self.run_guarded(privop.emulate_rdtsc, self, True)
        return 1

    # I/O instructions: Unicorn executes them without any permission check. The clock's block counter finds
    # them (count_block) and we hook exactly those instructions before they run (see privop). The IN/OUT
    # instruction hooks below only fire if one slipped through (code rewritten at the same address).
    def count_block(self, addr: int, size: int) -> int:
        try:
            code = self.aspace.read(addr, size)
        except GuestFault:
            return 1
        n, io = privop.count_block_instructions(code, addr)
        io = [a for a in io if a not in self.intercepted]
        if io:
            self.pending_intercepts.append((addr, size, io))
            self.domain.clock.set_deadline(0)        # stop before this block runs; it is retranslated
        return n

    def install_intercepts(self) -> None:
        for addr, size, io in self.pending_intercepts:
            for a in io:
                if a not in self.intercepted:
                    self.uc.hook_add(UC_HOOK_CODE, self._on_io_intercept, None, a, a)
                    self.intercepted.add(a)
            self.uc.ctl_remove_cache(addr, addr + size)
        self.pending_intercepts.clear()

    def _on_io_intercept(self, uc: Uc, addr: int, size: int, _: object) -> None:
        code = privop.fetch_insn_bytes(self, addr, 16)
        n, io = privop.count_block_instructions(code, addr)
        if io and io[0] == addr:
            self.run_guarded(privop.io_instruction, self, addr)

    def _on_in(self, uc: Uc, port: int, size: int, _: object) -> int:
        self.domain.log_once(("io-escaped", self.rip), f"I/O instruction near {self.rip:#x} was not intercepted")
        return 0xFFFFFFFF

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _: object) -> None:
        self.domain.log_once(("io-escaped", self.rip), f"I/O instruction near {self.rip:#x} was not intercepted")

    # -- saved state (hypervisor/save.py) -----------------------------------------------------------------
    def save(self) -> dict:
        """The PV state (Xen's struct pv_vcpu), the registers and the intercepted I/O instructions of a
        stopped vCPU. Its armed timers are saved with the domain's timer queue."""
        if self.pending_intercepts or self.in_multicall:
            raise StateError("a vCPU is in the middle of a run slice")
        pv: dict = {name: getattr(self, name) for name in SAVED_INTS + SAVED_BOOLS}
        pv["trap_table"] = [[i, e.flags, e.cs, e.address] for i, e in enumerate(self.trap_table)
                            if e.flags or e.cs or e.address]
        pv["gdt_frames"] = list(self.gdt_frames)
        pv["vcpu_info_mfn"] = self.vcpu_info_mfn if self.vcpu_info_view is not None else None
        pv["poll_ports"] = sorted(self.poll_ports) if self.poll_ports is not None else None
        pv["poll_deadline"] = self.poll_deadline
        pv["compat_callbacks"] = [[t, a, m] for t, (a, m) in sorted(self.compat_callbacks.items())]
        pv["ldt"] = list(self.ldt)
        pv["cr4_ctl"] = self.cr4_ctl
        pv["debugreg"] = list(self.debugreg)
        pv["xcr0"] = self.xcr0
        pv.update({name: getattr(self, name) for name in SAVED_OPTIONAL_INTS})
        return {"id": self.id, "pv": pv, "regs": vcpu_regs.save(self), "period": self.timer.period,
                "intercepted": sorted(self.intercepted)}

    def restore(self, f: Fields) -> None:
        """Take back a save() into this vCPU of a freshly built domain whose memory, frame table and event
        channels are restored already (Xen's arch_set_info_guest). Every field is checked before anything is
        applied; the CPU then re-enters the guest at the saved registers (vcpu_regs.restore)."""
        where = f.where
        dom = self.domain
        pv = f.sub("pv")
        state: dict = {name: pv.int(name) for name in SAVED_INTS}
        state.update({name: pv.bool(name) for name in SAVED_BOOLS})
        table = [TrapEntry() for _ in range(256)]
        for i, e in enumerate(pv.list("trap_table", 256)):
            if not (isinstance(e, list) and len(e) == 4 and all(isinstance(x, int) for x in e)
                    and 0 <= e[0] < 256 and 0 <= e[1] < 256 and 0 <= e[2] < 1 << 16 and 0 <= e[3] < 1 << 64):
                raise StateError(f"{where}.pv.trap_table[{i}] is malformed")
            table[e[0]] = TrapEntry(e[1], e[2], e[3])
        gdt_frames = [dom.check_frame(m, f"{where}.pv.gdt_frames") for m in pv.list("gdt_frames", 16)]
        for name in ("guest_table", "guest_table_user"):
            if state[name]:
                dom.check_frame(state[name], f"{where}.pv.{name}")
        offset = state["vcpu_info_offset"]
        if offset > PAGE_SIZE - 64 or offset & 7:
            raise StateError(f"{where}.pv.vcpu_info_offset is out of range")
        vcpu_info_mfn = pv.obj.get("vcpu_info_mfn")
        if vcpu_info_mfn is None:
            if offset != self.id * 64:
                raise StateError(f"{where} has no vcpu_info frame but a moved offset")
        else:
            dom.check_frame(vcpu_info_mfn, f"{where}.pv.vcpu_info_mfn")
        poll_ports = set(pv.ints("poll_ports", 0, 4095, 128)) if pv.obj.get("poll_ports") is not None else None
        poll_deadline = pv.int("poll_deadline", optional=True)
        compat_callbacks = {}
        for e in pv.list("compat_callbacks", 16):
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], int) and isinstance(e[1], int)
                    and isinstance(e[2], bool)):
                raise StateError(f"{where}.pv.compat_callbacks is malformed")
            compat_callbacks[e[0]] = (e[1], e[2])
        ldt = pv.ints("ldt", 0, (1 << 64) - 1, 2)
        if len(ldt) != 2:
            raise StateError(f"{where}.pv.ldt must be [base, entries]")
        # Carried since the debug/control register state moved onto the vCPU; older files start with the reset
        # values, as they did when they were written.
        cr4_ctl, debugreg = 0, [0, 0, 0, 0, 0, 0, DR6_DEFAULT, DR7_DEFAULT]
        if pv.has("cr4_ctl"):
            cr4_ctl = pv.int("cr4_ctl", 0, PV_CR4_GUEST_MASK)
            if cr4_ctl & ~PV_CR4_GUEST_MASK:
                raise StateError(f"{where}.pv.cr4_ctl holds bits a PV guest cannot set")
            debugreg = pv.ints("debugreg", 0, (1 << 64) - 1, 8)
            if len(debugreg) != 8:
                raise StateError(f"{where}.pv.debugreg must be 8 integers")
        optional = {name: pv.int(name) if pv.has(name) else 0 for name in SAVED_OPTIONAL_INTS}
        if optional["tsc_aux"] >> 32:
            raise StateError(f"{where}.pv.tsc_aux is wider than 32 bits")
        # XCR0 since xsetbv is emulated; older files: never set.
        xcr0 = pv.int("xcr0", 0, (1 << 64) - 1) if pv.has("xcr0") else 0
        if xcr0 and (xcr0 & ~xcr0_max() or not valid_xcr0(xcr0)):
            raise StateError(f"{where}.pv.xcr0 is not a value xsetbv would accept")
        period = f.int("period")
        regs = f.obj.get("regs")
        problems = vcpu_regs.check(regs, f"{where}.regs")
        if problems:
            raise StateError(problems[0])
        if state["started"] and regs["cr3"] >> 12 not in (state["guest_table"], state["guest_table_user"]):
            raise StateError(f"{where}.regs.cr3 is not one of the vCPU's page tables")
        intercepted = f.ints("intercepted", limit=1 << 16)
        # Xen's guest-context checks (arch_set_info_guest, x86/vcpu_context.py) on everything parsed above,
        # before anything is applied: nothing in a file may put the guest anywhere a running PV vCPU cannot be.
        self._check_saved_context(where, state, regs, table, gdt_frames, vcpu_info_mfn, compat_callbacks,
                                  (ldt[0], ldt[1]), debugreg, cr4_ctl)

        for name, value in state.items():
            setattr(self, name, value)
        self.trap_table = table
        self.gdt_frames = gdt_frames
        if self.id == 0:
            dom.xen.set_guest_gdt(gdt_frames)         # Xen's GDT mapping follows the vCPU's frames (pv_set_gdt)
        self.vcpu_info_view = dom.mem.frame(vcpu_info_mfn) if vcpu_info_mfn is not None else None
        if vcpu_info_mfn is not None:
            self.vcpu_info_mfn = vcpu_info_mfn
        self.poll_ports = poll_ports
        self.poll_deadline = poll_deadline
        self.compat_callbacks = compat_callbacks
        self.ldt = (ldt[0], ldt[1])
        self.cr4_ctl = cr4_ctl
        self.debugreg = list(debugreg)
        self.hw_bp.dirty = True
        self.xcr0 = xcr0
        for name, value in optional.items():
            setattr(self, name, value)
        self.timer.period = period
        vcpu_regs.restore(self, regs, self.started)
        load_xcr0(self)
        for addr in intercepted:
            self.pending_intercepts.append((addr, 1, [addr]))
        self.install_intercepts()

    def _check_saved_context(self, where: str, state: dict, regs: dict, table: list, gdt_frames: list[int],
                             vcpu_info_mfn: Optional[int], compat_callbacks: dict, ldt: tuple[int, int],
                             debugreg: list[int], cr4_ctl: int) -> None:
        """Refuse (StateError) a saved vCPU state that Xen would refuse as a vCPU context, or that no running PV
        vCPU can be in: privileged selectors or RFLAGS, non-canonical addresses, page-table bases that are not
        validated L4 tables of the domain, GDT frames without their descriptor type, a vcpu_info frame without
        a writable type, registers of a vCPU not started yet other than start-of-day's."""
        dom = self.domain
        frames = dom.frames
        if not state["started"]:
            # Never entered: its registers are the start-of-day ones this rebuilt vCPU holds now (they point
            # at Xen's entry stub, at CPL 0; the guest's entry frame is on Xen's stack).
            fresh = vcpu_regs.save(self)
            for name in ("rip", "rsp", "rflags", "cs", "ss", "ds", "es", "fs", "gs", "cr0", "cr3", "cr4", "efer",
                         "fs_base", "gs_base", "kernel_gs_base"):
                if regs[name] != fresh[name]:
                    raise StateError(f"{where}.regs.{name} of a vCPU that never ran is not start-of-day's")
        parsed = SimpleNamespace(**state, id=self.id, trap_table=table, gdt_frames=gdt_frames, ldt=ldt,
                                 debugreg=debugreg, compat_callbacks=compat_callbacks, cr4_ctl=cr4_ctl)
        problem = vcpu_context.check_pv_state(parsed, regs, dom.vm_assist)
        if problem:
            raise StateError(f"{where}: {problem}")

        def typed(mfn: int, t: int) -> bool:
            return frames.type[mfn] == t and frames.count[mfn] > 0 and bool(frames.flags[mfn] & PGT_validated)
        for name in ("guest_table", "guest_table_user"):
            if state[name] and not typed(state[name], PGT_l4):
                raise StateError(f"{where}.pv.{name} {state[name]:#x} is not a validated L4 table of the domain "
                                 "(Xen's get_page_type(PGT_root_page_table))")
        if state["started"]:
            if not state["guest_table"]:
                raise StateError(f"{where} has no kernel page table")
            if not state["kernel_mode"] and not state["guest_table_user"]:
                raise StateError(f"{where} is in user mode without a user page table")
            want = state["guest_table"] if state["kernel_mode"] else state["guest_table_user"]
            if regs["cr3"] >> 12 != want or regs["cr3"] & 0xFFF:
                raise StateError(f"{where}.regs.cr3 is not the {'kernel' if state['kernel_mode'] else 'user'} "
                                 "page table of its mode")
        for mfn in gdt_frames:
            if not typed(mfn, PGT_seg_desc):
                raise StateError(f"{where}.pv.gdt_frames: {mfn:#x} does not have the descriptor-page type")
        if len(gdt_frames) != (state["gdt_ents"] + 511) // 512:
            raise StateError(f"{where}.pv.gdt_frames do not match gdt_ents {state['gdt_ents']}")
        if vcpu_info_mfn is not None and not typed(vcpu_info_mfn, PGT_writable):
            raise StateError(f"{where}.pv.vcpu_info_mfn {vcpu_info_mfn:#x} does not hold a writable type")

    # -- running ------------------------------------------------------------------------------------------
    def run_slice(self) -> None:
        """Run the guest until a hook or the clock stops it."""
        self.stop_reason = None
        self.hw_bp.before_slice()
        begin = self.rip
        # A hook that stopped the CPU (block, pause, a deadline) leaves Unicorn's exception-in-progress state
        # set (a fetch fault at `until`): without this reset the guest's next fault becomes a #DF.
        read_exception_state(self.uc)
        try:
            self.uc.emu_start(begin, NEVER_EXECUTED_VA)
        except UcError as e:
            self.domain.crash(f"CPU error: {e} (guest accessed memory outside the machine)", self)
        except Exception as e:      # raised by a hook through the binding
            self.domain.internal_error(e, self)
        self.started = True
