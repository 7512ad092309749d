"""Hypercall decoders: turn a hypercall's raw register arguments into the structs the guest passed and the
values Xen handed back, for trace records.

A trace that says `event_channel_op(send) {port: 2}` or `bind_virq {virq: TIMER} -> {port: 3}` is something a
reviewer can read and a golden file can pin down; `args: [4, 18446744071562095876]` is neither. Decoders
are registered per (hypercall name, sub-op name) -- sub-op None for hypercalls without sub-ops -- in two
phases: `inputs` runs before the handler (so it sees what the guest asked, not what the handler overwrote)
and `outputs` runs after it (the port bind_virq returned, the extents populate_physmap filled in). Both
read guest memory through the vCPU's own page tables like the handler does, and never write it.

Guest memory is hostile: a decoder that meets an unmapped pointer records `{"fault": address}` instead of
failing, and any other error in a decoder is recorded as `{"decode_error": ...}` -- tracing must never
change what the guest sees. Lists are cut at MAX_ITEMS entries (with `"more": n`) so a guest cannot make
the trace explode. Every value is plain data (ints, strings, lists, dicts): records stay deterministic.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Callable, Optional

from miniguest.abi import errno
from miniguest.abi.callback import CALLBACKTYPE_NAMES
from miniguest.abi.event_channel import (EVTCHNSTAT_interdomain, EVTCHNSTAT_ipi, EVTCHNSTAT_unbound,
                                         EVTCHNSTAT_virq)
from miniguest.abi.sched import SHUTDOWN_NAMES
from miniguest.abi.xen import (DOMID_SELF, HYPERCALL_NAMES, MMUEXT_NAMES, UVMF_ALL, UVMF_FLUSHTYPE_MASK,
                               UVMF_INVLPG, UVMF_TLB_FLUSH, VIRQ_NAMES)
from miniguest.hypervisor.host import GuestFault

if TYPE_CHECKING:
    from miniguest.hypervisor.host import Vcpu

MAX_ITEMS = 32
Fields = dict[str, Any]
InputFn = Callable[["Ctx"], Optional[Fields]]
OutputFn = Callable[["Ctx", Fields], Optional[Fields]]

_INPUTS: dict[tuple[str, Optional[str]], InputFn] = {}
_OUTPUTS: dict[tuple[str, Optional[str]], tuple[OutputFn, bool]] = {}
EVTCHN_STATUS = {0: "closed", EVTCHNSTAT_unbound: "unbound", EVTCHNSTAT_interdomain: "interdomain",
                 3: "pirq", EVTCHNSTAT_virq: "virq", EVTCHNSTAT_ipi: "ipi"}
RESERVED_DOMIDS = {DOMID_SELF: "DOMID_SELF", 0x7FF1: "DOMID_IO", 0x7FF2: "DOMID_XEN", 0x7FF3: "DOMID_COW",
                   0x7FF4: "DOMID_INVALID"}


class Ctx:
    """What a decoder sees: the vCPU, the raw arguments, the result (outputs only) and safe readers."""

    def __init__(self, vcpu: "Vcpu", args: tuple[int, ...], result: Optional[int] = None) -> None:
        self.vcpu = vcpu
        self.args = args
        self.result = result

    def read(self, va: int, size: int) -> bytes:
        return self.vcpu.mem.read(va, size)

    def unpack(self, fmt: str, va: int) -> tuple:
        return struct.unpack(fmt, self.read(va, struct.calcsize(fmt)))

    def u16(self, va: int) -> int:
        return self.unpack("<H", va)[0]

    def u32(self, va: int) -> int:
        return self.unpack("<I", va)[0]

    def u64(self, va: int) -> int:
        return self.unpack("<Q", va)[0]

    def cstr(self, va: int, size: int) -> str:
        return self.read(va, size).split(b"\0", 1)[0].decode("latin-1")

    def symbol(self, addr: int) -> Optional[str]:
        """`name+0x1c` for a guest kernel address (handlers, call sites), None if unknown."""
        return symbolize(self.vcpu.domain, addr)

    def now(self) -> int:
        return self.vcpu.domain.clock.now_ns()


def symbolize(domain: Any, addr: Optional[int]) -> Optional[str]:
    syms = getattr(domain, "symbols", None)
    if addr is None or syms is None:
        return None
    hit = syms.lookup(addr)
    if hit is None:
        return None
    name, off = hit
    return f"{name}+{off:#x}" if off else name


def inputs(name: str, subop: Optional[str] = None) -> Callable[[InputFn], InputFn]:
    """Register the input decoder of `name(subop)`; it returns the fields to record (or None)."""
    def register(fn: InputFn) -> InputFn:
        _INPUTS[(name, subop)] = fn
        return fn
    return register


def outputs(name: str, subop: Optional[str] = None, on_error: bool = False) -> Callable[[OutputFn], OutputFn]:
    """Register the output decoder of `name(subop)`; by default it runs only when the call succeeded
    (result >= 0): Xen gives no guarantee about output buffers of a failed call."""
    def register(fn: OutputFn) -> OutputFn:
        _OUTPUTS[(name, subop)] = (fn, on_error)
        return fn
    return register


def _guarded(fn: Callable[[], Optional[Fields]]) -> Optional[Fields]:
    try:
        return fn()
    except GuestFault as f:
        return {"fault": f.va}
    except Exception as e:          # a decoder bug must never reach the guest
        return {"decode_error": f"{type(e).__name__}: {e}"}


def decode_inputs(vcpu: "Vcpu", name: str, subop: Optional[str], args: tuple[int, ...]) -> Optional[Fields]:
    fn = _INPUTS.get((name, subop))
    if fn is None:
        return None
    return _guarded(lambda: fn(Ctx(vcpu, args)))


def decode_outputs(vcpu: "Vcpu", name: str, subop: Optional[str], args: tuple[int, ...], result: Optional[int],
                   ins: Optional[Fields]) -> Optional[Fields]:
    entry = _OUTPUTS.get((name, subop))
    if entry is None:
        return None
    fn, on_error = entry
    if result is not None and result < 0 and not on_error:
        return None
    return _guarded(lambda: fn(Ctx(vcpu, args, result), ins or {}))


def registered() -> list[tuple[str, Optional[str], str]]:
    """(hypercall, sub-op, 'in'/'out') for every decoder: documentation and tests."""
    out = [(n, s, "in") for n, s in _INPUTS] + [(n, s, "out") for n, s in _OUTPUTS]
    return sorted(out, key=lambda t: (t[0], t[1] or "", t[2]))


# -- helpers ------------------------------------------------------------------------------------------------
def domid(value: int) -> Any:
    return RESERVED_DOMIDS.get(value, value)


def virq_name(virq: int) -> Any:
    name = VIRQ_NAMES.get(virq)
    return name[len("VIRQ_"):] if name else virq


def _put(out: Fields, key: str, values: list, total: int) -> Fields:
    """out[key] = values, plus out[key + "_more"] = how many were cut (MAX_ITEMS)."""
    out[key] = values
    if total > len(values):
        out[key + "_more"] = total - len(values)
    return out


def _array(ctx: Ctx, va: int, count: int, fmt: str) -> tuple[list, int]:
    n = min(count, MAX_ITEMS)
    size = struct.calcsize(fmt)
    return [ctx.unpack(fmt, va + i * size) for i in range(n)], count


# -- event_channel_op ---------------------------------------------------------------------------------------
_EVTCHN_IN = {
    "alloc_unbound": ("<HH", ("dom", "remote_dom")),
    "bind_interdomain": ("<H2xI", ("remote_dom", "remote_port")),
    "bind_virq": ("<II", ("virq", "vcpu")),
    "bind_ipi": ("<I", ("vcpu",)),
    "close": ("<I", ("port",)),
    "send": ("<I", ("port",)),
    "unmask": ("<I", ("port",)),
    "status": ("<H2xI", ("dom", "port")),
    "bind_vcpu": ("<II", ("port", "vcpu")),
    "reset": ("<H", ("dom",)),
}
_EVTCHN_OUT = {"alloc_unbound": (4, "port"), "bind_interdomain": (8, "local_port"), "bind_virq": (8, "port"),
               "bind_ipi": (4, "port")}


def _evtchn_in(ctx: Ctx, op: str, arg: int) -> Optional[Fields]:
    spec = _EVTCHN_IN.get(op)
    if spec is None:
        return None
    fmt, names = spec
    out = dict(zip(names, ctx.unpack(fmt, arg)))
    for key in ("dom", "remote_dom"):
        if key in out:
            out[key] = domid(out[key])
    if op == "bind_virq":
        out["virq"] = virq_name(out["virq"])
    return out


def _evtchn_out(ctx: Ctx, op: str, arg: int) -> Optional[Fields]:
    if op in _EVTCHN_OUT:
        off, key = _EVTCHN_OUT[op]
        return {key: ctx.u32(arg + off)}
    if op == "status":
        status, vcpu, u0, u1 = ctx.unpack("<IIII", arg + 8)
        out: Fields = {"status": EVTCHN_STATUS.get(status, status), "vcpu": vcpu}
        if status == EVTCHNSTAT_unbound:
            out["remote_dom"] = u0 & 0xFFFF
        elif status == EVTCHNSTAT_interdomain:
            out["remote_dom"], out["remote_port"] = u0 & 0xFFFF, u1
        elif status == EVTCHNSTAT_virq:
            out["virq"] = virq_name(u0)
        return out
    return None


def _register_evtchn() -> None:
    for op in _EVTCHN_IN:
        inputs("event_channel_op", op)(lambda ctx, op=op: _evtchn_in(ctx, op, ctx.args[1]))
    for op in list(_EVTCHN_OUT) + ["status"]:
        outputs("event_channel_op", op)(lambda ctx, ins, op=op: _evtchn_out(ctx, op, ctx.args[1]))


_register_evtchn()
_COMPAT_OPS = {0: "bind_interdomain", 1: "bind_virq", 3: "close", 4: "send", 5: "status", 6: "alloc_unbound",
               7: "bind_ipi", 8: "bind_vcpu", 9: "unmask", 10: "reset"}


@inputs("event_channel_op_compat")
def _evtchn_compat_in(ctx: Ctx) -> Fields:
    cmd = ctx.u32(ctx.args[0])
    op = _COMPAT_OPS.get(cmd, str(cmd))
    return {"cmd": op, **(_evtchn_in(ctx, op, ctx.args[0] + 8) or {})}


@outputs("event_channel_op_compat")
def _evtchn_compat_out(ctx: Ctx, ins: Fields) -> Optional[Fields]:
    return _evtchn_out(ctx, ins.get("cmd", ""), ctx.args[0] + 8)


# -- sched_op -----------------------------------------------------------------------------------------------
def _reason(value: int) -> Any:
    return SHUTDOWN_NAMES.get(value, value)


@inputs("sched_op", "shutdown")
def _sched_shutdown(ctx: Ctx) -> Fields:
    return {"reason": _reason(ctx.u32(ctx.args[1]))}


@inputs("sched_op", "shutdown_code")
def _sched_shutdown_code(ctx: Ctx) -> Fields:
    return {"reason": _reason(ctx.u32(ctx.args[1]) & 0xFF)}


@inputs("sched_op", "remote_shutdown")
def _sched_remote_shutdown(ctx: Ctx) -> Fields:
    dom, reason = ctx.unpack("<HxxI", ctx.args[1])
    return {"domain_id": domid(dom), "reason": _reason(reason)}


@inputs("sched_op", "poll")
def _sched_poll(ctx: Ctx) -> Fields:
    ports_ptr, nr_ports, timeout = ctx.unpack("<QI4xQ", ctx.args[1])
    ports, total = _array(ctx, ports_ptr, nr_ports, "<I")
    return _put({"timeout": timeout}, "ports", [p[0] for p in ports], total)


@inputs("sched_op", "watchdog")
def _sched_watchdog(ctx: Ctx) -> Fields:
    wid, timeout = ctx.unpack("<II", ctx.args[1])
    return {"id": wid, "timeout_s": timeout}


@inputs("sched_op_compat", "shutdown")
def _sched_compat_shutdown(ctx: Ctx) -> Fields:
    return {"reason": _reason(ctx.args[1] & 0xFF)}


# -- memory_op ----------------------------------------------------------------------------------------------
@inputs("memory_op", "current_reservation")
@inputs("memory_op", "maximum_reservation")
@inputs("memory_op", "maximum_gpfn")
def _memop_domid(ctx: Ctx) -> Fields:
    return {"domid": domid(ctx.u16(ctx.args[1]))}


def _reservation(ctx: Ctx) -> tuple[int, int, int, int, int]:
    """(extent_start, nr_extents, extent_order, mem_flags, domid) of a xen_memory_reservation."""
    return ctx.unpack("<QQIIH", ctx.args[1])


@inputs("memory_op", "increase_reservation")
@inputs("memory_op", "decrease_reservation")
@inputs("memory_op", "populate_physmap")
def _memop_reservation_in(ctx: Ctx) -> Fields:
    start, nr, order, flags, dom = _reservation(ctx)
    out: Fields = {"nr_extents": nr, "extent_order": order, "mem_flags": flags, "domid": domid(dom)}
    if start and (ctx.args[0] & 0x3F) != 0:           # increase_reservation's list is output only
        values, total = _array(ctx, start, nr, "<Q")
        _put(out, "extents", [v[0] for v in values], total)
    return out


@outputs("memory_op", "increase_reservation")
@outputs("memory_op", "populate_physmap")
def _memop_reservation_out(ctx: Ctx, ins: Fields) -> Optional[Fields]:
    start = _reservation(ctx)[0]
    done = ctx.result or 0
    if not start or not done:
        return None
    values, total = _array(ctx, start, done, "<Q")
    return _put({}, "mfns", [v[0] for v in values], total)


@inputs("memory_op", "memory_map")
def _memop_map_in(ctx: Ctx) -> Fields:
    return {"nr_entries": ctx.u32(ctx.args[1])}


@outputs("memory_op", "memory_map")
def _memop_map_out(ctx: Ctx, ins: Fields) -> Fields:
    n, buf = ctx.unpack("<I4xQ", ctx.args[1])
    entries, total = _array(ctx, buf, n, "<QQI")
    return {"entries": [{"addr": a, "size": s, "type": t} for a, s, t in entries]}


@outputs("memory_op", "machphys_mapping")
def _memop_machphys(ctx: Ctx, ins: Fields) -> Fields:
    v_start, v_end, max_mfn = ctx.unpack("<QQQ", ctx.args[1])
    return {"v_start": v_start, "v_end": v_end, "max_mfn": max_mfn}


# -- page tables ------------------------------------------------------------------------------------------
_MMU_CMDS = {0: "normal", 1: "machphys", 2: "preserve_ad", 3: "no_translate"}


@inputs("mmu_update")
def _mmu_update_in(ctx: Ctx) -> Fields:
    ureqs, count, _, foreign = ctx.args[:4]
    count &= 0x7FFFFFFF
    reqs, total = _array(ctx, ureqs, count, "<QQ")
    return _put({"count": count, "foreigndom": domid(foreign & 0xFFFF)}, "reqs",
                [{"cmd": _MMU_CMDS.get(p & 7, p & 7), "ptr": p & ~7, "val": v} for p, v in reqs], total)


@outputs("mmu_update", on_error=True)
@outputs("mmuext_op", on_error=True)
def _pdone_out(ctx: Ctx, ins: Fields) -> Optional[Fields]:
    pdone = ctx.args[2]
    return {"done": ctx.u32(pdone)} if pdone else None


@inputs("mmuext_op")
def _mmuext_in(ctx: Ctx) -> Fields:
    uops, count, _, foreign = ctx.args[:4]
    count &= 0x7FFFFFFF
    ops, total = _array(ctx, uops, count, "<I4xQQ")
    items = []
    for cmd, arg1, arg2 in ops:
        name = MMUEXT_NAMES.get(cmd, str(cmd))
        items.append({"cmd": name[len("MMUEXT_"):].lower() if name.startswith("MMUEXT_") else name,
                      "arg1": arg1, "arg2": arg2})
    return _put({"count": count, "foreigndom": domid(foreign & 0xFFFF)}, "ops", items, total)


def _uvmf(flags: int) -> str:
    kind = {0: "none", UVMF_TLB_FLUSH: "tlb_flush", UVMF_INVLPG: "invlpg"}.get(flags & UVMF_FLUSHTYPE_MASK, "?")
    rest = flags & ~UVMF_FLUSHTYPE_MASK
    scope = "local" if rest == 0 else "all" if rest == UVMF_ALL else "multi"
    return f"{kind}|{scope}"


@inputs("update_va_mapping")
def _uvm_in(ctx: Ctx) -> Fields:
    va, val, flags = ctx.args[:3]
    return {"va": va, "val": val, "flags": _uvmf(flags)}


@inputs("update_va_mapping_otherdomain")
def _uvm_other_in(ctx: Ctx) -> Fields:
    va, val, flags, dom = ctx.args[:4]
    return {"va": va, "val": val, "flags": _uvmf(flags), "domid": domid(dom & 0xFFFF)}


@inputs("vm_assist", "enable")
@inputs("vm_assist", "disable")
def _vm_assist_in(ctx: Ctx) -> Fields:
    return {"type": ctx.args[1] & 0xFFFFFFFF}


# -- traps, callbacks, segments ---------------------------------------------------------------------------
@inputs("set_trap_table")
def _trap_table_in(ctx: Ctx) -> Fields:
    va = ctx.args[0]
    if va == 0:
        return {"clear": True}
    traps = []
    for i in range(257):
        vector, flags, cs, address = ctx.unpack("<BBH4xQ", va + 16 * i)
        if address == 0:
            break
        if len(traps) < MAX_ITEMS:
            traps.append({"vector": vector, "flags": flags, "cs": cs, "handler": ctx.symbol(address) or address})
    return {"traps": traps, "count": i}


@inputs("callback_op", "register")
def _callback_register_in(ctx: Ctx) -> Fields:
    ctype, flags, address = ctx.unpack("<HH4xQ", ctx.args[1])
    return {"type": CALLBACKTYPE_NAMES.get(ctype, ctype), "flags": flags,
            "address": address, "handler": ctx.symbol(address) if address else None}


@inputs("callback_op", "unregister")
def _callback_unregister_in(ctx: Ctx) -> Fields:
    ctype = ctx.u16(ctx.args[1])
    return {"type": CALLBACKTYPE_NAMES.get(ctype, ctype)}


@inputs("set_callbacks")
def _set_callbacks_in(ctx: Ctx) -> Fields:
    return {k: (ctx.symbol(a) or a) if a else 0 for k, a in zip(("event", "failsafe", "syscall"), ctx.args[:3])}


@inputs("stack_switch")
def _stack_switch_in(ctx: Ctx) -> Fields:
    return {"ss": ctx.args[0] & 0xFFFF, "sp": ctx.args[1]}


@inputs("set_segment_base", "fs")
@inputs("set_segment_base", "gs_user")
@inputs("set_segment_base", "gs_kernel")
@inputs("set_segment_base", "gs_user_sel")
def _segbase_in(ctx: Ctx) -> Fields:
    return {"base": ctx.args[1]}


@inputs("fpu_taskswitch")
def _fpu_in(ctx: Ctx) -> Fields:
    return {"set_ts": int(bool(ctx.args[0]))}


@inputs("set_gdt")
def _set_gdt_in(ctx: Ctx) -> Fields:
    entries = ctx.args[1] & 0xFFFFFFFF
    nr = min((entries + 511) // 512, 16)
    frames = list(ctx.unpack(f"<{nr}Q", ctx.args[0])) if nr else []
    return {"entries": entries, "frames": frames}


@inputs("update_descriptor")
def _update_descriptor_in(ctx: Ctx) -> Fields:
    return {"ma": ctx.args[0], "desc": ctx.args[1]}


@inputs("iret")
def _iret_in(ctx: Ctx) -> Fields:
    from unicorn import x86_const as X
    rsp = ctx.vcpu.uc.reg_read(X.UC_X86_REG_RSP)
    rax, r11, rcx, flags, rip, cs, rflags, sp, ss = ctx.unpack("<9Q", rsp)
    return {"rip": rip, "to": ctx.symbol(rip), "cs": cs, "rflags": rflags, "rsp": sp, "ss": ss, "flags": flags}


# -- time ---------------------------------------------------------------------------------------------------
@inputs("set_timer_op")
def _set_timer_in(ctx: Ctx) -> Fields:
    timeout = ctx.args[0]
    return {"timeout": timeout, "in_ns": timeout - ctx.now() if timeout else None}


@inputs("vcpu_op", "set_singleshot_timer")
def _singleshot_in(ctx: Ctx) -> Fields:
    timeout, flags = ctx.unpack("<QI4x", ctx.args[2])
    return {"vcpu": ctx.args[1] & 0xFFFFFFFF, "timeout": timeout, "in_ns": timeout - ctx.now(), "flags": flags}


@inputs("vcpu_op", "set_periodic_timer")
def _periodic_in(ctx: Ctx) -> Fields:
    return {"vcpu": ctx.args[1] & 0xFFFFFFFF, "period_ns": ctx.u64(ctx.args[2])}


@inputs("vcpu_op", "register_vcpu_info")
def _vcpu_info_in(ctx: Ctx) -> Fields:
    mfn, offset = ctx.unpack("<QI4x", ctx.args[2])
    return {"vcpu": ctx.args[1] & 0xFFFFFFFF, "mfn": mfn, "offset": offset}


@inputs("vcpu_op", "register_runstate_memory_area")
def _runstate_area_in(ctx: Ctx) -> Fields:
    return {"vcpu": ctx.args[1] & 0xFFFFFFFF, "addr": ctx.u64(ctx.args[2])}


for _op in ("stop_periodic_timer", "stop_singleshot_timer", "is_up", "up", "down", "initialise",
            "get_runstate_info", "get_physid", "send_nmi"):
    inputs("vcpu_op", _op)(lambda ctx: {"vcpu": ctx.args[1] & 0xFFFFFFFF})


@outputs("vcpu_op", "get_runstate_info")
def _runstate_out(ctx: Ctx, ins: Fields) -> Fields:
    state, entry, t0, t1, t2, t3 = ctx.unpack("<i4xQ4Q", ctx.args[2])
    return {"state": state, "state_entry_time": entry, "time": [t0, t1, t2, t3]}


# -- grant tables -----------------------------------------------------------------------------------------
@inputs("grant_table_op", "setup_table")
def _gnt_setup_in(ctx: Ctx) -> Fields:
    dom, nr = ctx.unpack("<H2xI", ctx.args[1])
    return {"dom": domid(dom), "nr_frames": nr, "count": ctx.args[2] & 0xFFFFFFFF}


@outputs("grant_table_op", "setup_table")
def _gnt_setup_out(ctx: Ctx, ins: Fields) -> Fields:
    _, nr, status, frame_list = ctx.unpack("<H2xIh6xQ", ctx.args[1])
    out: Fields = {"status": status}
    if status == 0 and nr:
        frames, total = _array(ctx, frame_list, nr, "<Q")
        _put(out, "frames", [f[0] for f in frames], total)
    return out


@outputs("grant_table_op", "query_size")
def _gnt_query_out(ctx: Ctx, ins: Fields) -> Fields:
    _, nr, max_nr, status = ctx.unpack("<H2xIIh2x", ctx.args[1])
    return {"nr_frames": nr, "max_nr_frames": max_nr, "status": status}


# -- xen_version, console ---------------------------------------------------------------------------------
@outputs("xen_version", "version")
def _ver_out(ctx: Ctx, ins: Fields) -> Fields:
    r = ctx.result or 0
    return {"major": r >> 16, "minor": r & 0xFFFF}


@outputs("xen_version", "extraversion")
def _extraversion_out(ctx: Ctx, ins: Fields) -> Fields:
    return {"extraversion": ctx.cstr(ctx.args[1], 16)}


@outputs("xen_version", "capabilities")
def _capabilities_out(ctx: Ctx, ins: Fields) -> Fields:
    return {"capabilities": ctx.cstr(ctx.args[1], 1024)}


@outputs("xen_version", "changeset")
def _changeset_out(ctx: Ctx, ins: Fields) -> Fields:
    return {"changeset": ctx.cstr(ctx.args[1], 64)}


@outputs("xen_version", "platform_parameters")
def _platform_out(ctx: Ctx, ins: Fields) -> Fields:
    return {"virt_start": ctx.u64(ctx.args[1])}


@inputs("xen_version", "get_features")
def _features_in(ctx: Ctx) -> Fields:
    return {"submap_idx": ctx.u32(ctx.args[1])}


@outputs("xen_version", "get_features")
def _features_out(ctx: Ctx, ins: Fields) -> Fields:
    return {"submap": ctx.u32(ctx.args[1] + 4)}


@outputs("xen_version", "guest_handle")
def _handle_out(ctx: Ctx, ins: Fields) -> Fields:
    return {"handle": ctx.read(ctx.args[1], 16).hex()}


@inputs("console_io", "write")
def _console_write_in(ctx: Ctx) -> Fields:
    return {"count": ctx.args[1] & 0xFFFFFFFF}


@outputs("console_io", "read")
def _console_read_out(ctx: Ctx, ins: Fields) -> Optional[Fields]:
    n = ctx.result or 0
    return {"data": ctx.read(ctx.args[2], n).decode("latin-1")} if n else None


# -- multicall --------------------------------------------------------------------------------------------
def _op_name(op: int) -> str:
    return HYPERCALL_NAMES.get(op, str(op))


@inputs("multicall")
def _multicall_in(ctx: Ctx) -> Fields:
    nr = ctx.args[1] & 0xFFFFFFFF
    entries, total = _array(ctx, ctx.args[0], nr, "<QQ6Q")
    return _put({"nr_calls": nr}, "ops", [_op_name(e[0]) for e in entries], total)


@outputs("multicall")
def _multicall_out(ctx: Ctx, ins: Fields) -> Fields:
    nr = ctx.args[1] & 0xFFFFFFFF
    entries, total = _array(ctx, ctx.args[0], nr, "<QQ6Q")
    results = []
    for e in entries:
        r = e[1] - (1 << 64) if e[1] >= 1 << 63 else e[1]
        results.append(f"-{errno.name(-r)}" if -4096 < r < 0 else r)
    return _put({}, "results", results, total)
