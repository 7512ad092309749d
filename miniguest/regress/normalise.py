"""The normal form of a trace for golden files: behaviour without the addresses a rebuild moves.

A golden trace must change when hypercall handling changes -- a result, an errno, an argument value, the
order of records -- and must not change when a guest is merely rebuilt and its code and data land at other
addresses. Raw trace records hold such addresses in a few known places; the normal form replaces them:

  call sites      `caller` (the raw return address) is dropped; `site` (`function+0x1c`) stays.
  guest pointers  the arguments Xen's hypercall prototypes declare as guest handles (xen/include/hypercall-
                  defs.c: `mmu_update(mmu_update_t *ureqs, unsigned int count, unsigned int *pdone, ...)`)
                  and decoded fields that are pointers (a stack pointer, a runstate area): by name when
                  they point into the image (`symbol+0x10`) or into the start-of-day area (`<start_info>`,
                  `<pt+0x2000>`, `<boot_stack+0xff8>`), else `<ptr>` (a stack or heap buffer of no fixed
                  address). NULL and non-canonical pointers stay numbers: they are what a test passes on
                  purpose.
  code addresses  values that are virtual addresses by meaning -- callbacks and trap handlers, the va of
                  update_va_mapping, segment bases, an iret's rip, an exception's rip and cr2, a privileged
                  instruction's rip -- by name when they have one, else the number.

Everything else is compared as recorded: hypercall numbers, sub-ops, non-pointer arguments, decoded argument
structs and results, errnos, events, console bytes, xenstore messages, virtual times, and the order. Machine
frame numbers (mmu_update's ptr/val, populate_physmap's extents) are values Xen hands out and stay numbers:
they move only when the start-of-day layout does (an image that grows by a page), and then the guest
sees different memory, which is a change worth reviewing. So do numbers a guest prints on its console.

A normalised trace file says so in its header (`"normalised": true`) and carries no image hash: a rebuilt
image with the same behaviour has the same golden. Normalising is idempotent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from miniguest.debug.tracer import TraceRecord

PAGE = 4096
PTR = "ptr"             # a guest pointer: a name, or "<ptr>"
ADDR = "addr"           # a virtual address by meaning: a name, or the number
UNNAMED = "<ptr>"
NORMALISED_KEY = "normalised"

# Which arguments of each hypercall are guest pointers (PTR) or addresses by value (ADDR), from the 64-bit
# PV prototypes in Xen's xen/include/hypercall-defs.c. Hypercalls not listed take no pointers.
ARG_KINDS: dict[str, tuple[Optional[str], ...]] = {
    "set_trap_table": (PTR,),
    "mmu_update": (PTR, None, PTR, None),
    "set_gdt": (PTR, None),
    "stack_switch": (None, PTR),
    "set_callbacks": (ADDR, ADDR, ADDR),
    "platform_op": (PTR,),
    "memory_op": (None, PTR),
    "multicall": (PTR, None),
    "update_va_mapping": (ADDR, None, None),
    "event_channel_op_compat": (PTR,),
    "xen_version": (None, PTR),
    "console_io": (None, None, PTR),
    "physdev_op_compat": (PTR,),
    "grant_table_op": (None, PTR, None),
    "update_va_mapping_otherdomain": (ADDR, None, None, None),
    "vcpu_op": (None, None, PTR),
    "set_segment_base": (None, ADDR),
    "mmuext_op": (PTR, None, PTR, None),
    "xsm_op": (PTR,),
    "nmi_op": (None, PTR),
    "sched_op": (None, PTR),
    "callback_op": (None, PTR),
    "xenoprof_op": (None, PTR),
    "event_channel_op": (None, PTR),
    "physdev_op": (None, PTR),
    "hvm_op": (None, PTR),
    "sysctl": (PTR,),
    "domctl": (PTR,),
    "kexec_op": (None, PTR),
    "argo_op": (None, PTR, PTR, None, None),
    "xenpmu_op": (None, PTR),
    "dm_op": (None, None, PTR),
    "hypfs_op": (None, PTR, None, PTR, None),
    "mca": (PTR,),
}

# Decoded fields (the families' decoders, hypervisor/decode.py) that hold pointers or addresses, by hypercall; they apply at
# any depth of the `in`/`out` structs (e.g. each entry of set_trap_table's `traps`).
FIELD_KINDS: dict[str, dict[str, str]] = {
    "set_trap_table": {"handler": ADDR},
    "callback_op": {"address": ADDR, "handler": ADDR},
    "set_callbacks": {"event": ADDR, "failsafe": ADDR, "syscall": ADDR},
    "stack_switch": {"sp": PTR},
    "iret": {"rip": ADDR, "rsp": PTR},
    "update_va_mapping": {"va": ADDR},
    "update_va_mapping_otherdomain": {"va": ADDR},
    "set_segment_base": {"base": ADDR},
    "vcpu_op": {"addr": PTR},
}
ANY_DECODED = {"fault": ADDR}            # a decoder met an unmapped pointer: the address it faulted on
# Non-hypercall records: fields that hold addresses.
RECORD_KINDS: dict[str, dict[str, str]] = {
    "exception": {"rip": ADDR, "cr2": ADDR},
    "privop": {"rip": ADDR},
    "ptwr": {"rip": ADDR},
}


def _canonical(addr: int) -> bool:
    top = addr >> 47
    return top == 0 or top == (1 << 17) - 1


@dataclass
class AddressNames:
    """Names of guest virtual addresses: symbols inside the kernel image, regions of the start-of-day area."""

    lookup: Callable[[int], Optional[tuple[str, int]]] = lambda addr: None
    image: tuple[int, int] = (0, 0)                          # [start, end) of the image, BSS included
    regions: list[tuple[int, int, str]] = field(default_factory=list)

    @classmethod
    def from_domain(cls, domain: Any) -> "AddressNames":
        syms = getattr(domain, "symbols", None)
        layout = getattr(domain, "layout", None)
        if layout is None:
            return cls(syms.lookup if syms is not None else (lambda addr: None))
        regions = []
        L = layout
        if L.mod_len:
            regions.append((L.mod_start, L.mod_start + (L.mod_len + PAGE - 1) // PAGE * PAGE, "module"))
        regions += [(L.p2m_start, L.p2m_start + L.p2m_frames * PAGE, "p2m"),
                    (L.start_info, L.start_info + PAGE, "start_info"),
                    (L.xenstore, L.xenstore + PAGE, "store_ring"),
                    (L.console, L.console + PAGE, "console_ring"),
                    (L.pt_base, L.pt_base + L.nr_pt_frames * PAGE, "pt"),
                    (L.stack, L.stack + PAGE, "boot_stack")]
        return cls(syms.lookup if syms is not None else (lambda addr: None),
                   (L.kernel_start, L.kernel_end), regions)

    def name(self, addr: int) -> Optional[str]:
        """`symbol+0x10` inside the image, `<region+0x10>` in the start-of-day area, else None."""
        start, end = self.image
        if start <= addr < end:
            hit = self.lookup(addr)
            if hit is None:
                return None
            sym, off = hit
            return f"{sym}+{off:#x}" if off else sym
        for lo, hi, region in self.regions:
            if lo <= addr < hi:
                return f"<{region}+{addr - lo:#x}>" if addr != lo else f"<{region}>"
        return None

    def value(self, v: Any, kind: Optional[str]) -> Any:
        if kind is None or not isinstance(v, int) or isinstance(v, bool) or v == 0:
            return v
        name = self.name(v)
        if name is not None:
            return name
        if kind == PTR and _canonical(v) and v < 1 << 64:
            return UNNAMED
        return v


NO_NAMES = AddressNames()


def _fields(value: Any, kinds: dict[str, str], names: AddressNames) -> Any:
    if isinstance(value, dict):
        return {k: names.value(v, kinds[k]) if k in kinds and not isinstance(v, (dict, list))
                else _fields(v, kinds, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fields(v, kinds, names) for v in value]
    return value


def normalise_record(rec: TraceRecord, names: AddressNames = NO_NAMES) -> TraceRecord:
    d = dict(rec.data)
    if rec.kind == "hypercall":
        d.pop("caller", None)
        name = d.get("name")
        kinds = ARG_KINDS.get(name, ())
        if isinstance(d.get("args"), list):
            d["args"] = [names.value(a, kinds[i] if i < len(kinds) else None) for i, a in enumerate(d["args"])]
        fkinds = {**ANY_DECODED, **FIELD_KINDS.get(name, {})}
        for key in ("in", "out"):
            if key in d:
                d[key] = _fields(d[key], fkinds, names)
    elif rec.kind in RECORD_KINDS:
        for key, kind in RECORD_KINDS[rec.kind].items():
            if key in d:
                d[key] = names.value(d[key], kind)
    return TraceRecord(rec.seq, rec.time, rec.kind, d)


def normalise(records: Iterable[TraceRecord], names: AddressNames = NO_NAMES) -> list[TraceRecord]:
    return [normalise_record(r, names) for r in records]


def normalised_meta(meta: Optional[dict[str, Any]]) -> dict[str, Any]:
    """A golden header's meta: what the trace was recorded from, without the image hash."""
    out = {k: v for k, v in (meta or {}).items() if k != "sha256"}
    out[NORMALISED_KEY] = True
    return out


def is_normalised(meta: Optional[dict[str, Any]]) -> bool:
    return bool((meta or {}).get(NORMALISED_KEY))
