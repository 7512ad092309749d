"""The CPUID a PV guest sees (Xen: xen/arch/x86/cpu-policy.c builds the policies, cpuid.c's guest_cpuid
answers a leaf from the domain's policy).

The "host" is Unicorn's emulated CPU (an Intel model, identical on every machine), so the policies are
host-independent and runs stay reproducible. They are computed in Xen's order:
- raw: what the CPU reports, dynamic bits (OSXSAVE, OSPKE, XSAVE sizes) cleared;
- host: raw clamped to the leaves Xen keeps, XSAVE leaves recalculated;
- PV max: host, misc leaves scrubbed (recalculate_misc), features masked to those cpufeatureset.h marks
  'A' or 'a' (all guests), Xen's max adjustments, dependencies (sanitise_featureset);
- PV default: PV max masked to the 'A' features (upper case: on by default), default adjustments;
- the domain's policy: the default as libxl applies it (xc_cpuid_apply_policy: host HTT/CMP_LEGACY) and
  recalculate_cpuid_policy clamps it.
PSE, PSE36, PGE, MTRR, VME, X2APIC, SMEP... are 'S'/'H' features: a PV guest never sees them. RDRAND,
RDSEED and FSGSBASE are left out of the host (MODEL_LIMITS).
guest_cpuid then answers a leaf with Xen's dynamic adjustments (OSXSAVE, XSAVE sizes for the vCPU's XCR0,
APIC id 0), plus Xen's own leaves at 0x40000000.
"""
from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Iterable

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from miniguest.abi.cpufeatureset import DEPS, FEATURES
from miniguest.hypervisor.common.kernel import XEN_MAJOR, XEN_MINOR
from miniguest.hypervisor.x86.cpu import CR4_OSXSAVE

if TYPE_CHECKING:
    from miniguest.hypervisor.vcpu import Vcpu

Leaf = tuple[int, int, int, int]            # eax, ebx, ecx, edx
Policy = dict[tuple[int, int], Leaf]        # (leaf, subleaf) -> registers; MSR words under (MSR_KEY, 0)

XEN_CPUID_BASE = 0x40000000
XEN_CPUID_MAX_LEAF = 5                      # XEN_CPUID_MAX_NUM_LEAVES
XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD = 1 << 0
SUBLEAF_LEAVES = frozenset((4, 7, 0xB, 0xD))
NR_BASIC = 0xD + 1                          # CPUID_GUEST_NR_BASIC
NR_CACHE = 5 + 1
NR_FEAT = 2 + 1
NR_TOPO = 1 + 1
NR_XSTATE = 62 + 1
NR_EXTD_INTEL = 0x8 + 1
NR_EXTD = 0x21 + 1                          # max(Intel, AMD)
MSR_KEY = 0x10A                             # MSR_ARCH_CAPABILITIES (featureset words 16 and 17)
XSTATE_FP_SSE = 0x3
XSTATE_YMM = 1 << 2
XSTATE_BNDREGS, XSTATE_BNDCSR = 1 << 3, 1 << 4
XSTATE_AVX512 = (1 << 5) | (1 << 6) | (1 << 7)
XSTATE_PKRU = 1 << 9
XSTATE_AMX = (1 << 17) | (1 << 18)
XSTATE_XSAVES_ONLY = 0                      # components only XSAVES manages: none the policy can enable here

# featureset word -> (leaf, subleaf, register index 0-3)
WORD_LOCATIONS = {0: (1, 0, 3), 1: (1, 0, 2), 2: (0x80000001, 0, 3), 3: (0x80000001, 0, 2), 4: (0xD, 1, 0),
                  5: (7, 0, 1), 6: (7, 0, 2), 7: (0x80000007, 0, 3), 8: (0x80000008, 0, 1), 9: (7, 0, 3),
                  10: (7, 1, 0), 11: (0x80000021, 0, 0), 12: (7, 1, 1), 13: (7, 2, 3), 14: (7, 1, 2),
                  15: (7, 1, 3), 16: (MSR_KEY, 0, 0), 17: (MSR_KEY, 0, 3), 18: (0x80000021, 0, 2)}
NR_WORDS = max(WORD_LOCATIONS) + 1


def feature(name: str) -> int:
    return FEATURES[name][0]


def _mask(letters: str) -> int:
    """The featureset (as one big integer) of the features whose attributes hold any of `letters`."""
    m = 0
    for index, attrs in FEATURES.values():
        if any(ch in attrs for ch in letters):
            m |= 1 << index
    return m


KNOWN = _mask("") | sum(1 << i for i, _ in FEATURES.values())
PV_MAX_MASK = _mask("Aa")
PV_DEF_MASK = _mask("A")


@cache
def _deep_deps() -> dict[int, int]:
    """feature -> every feature that transitively depends on it (gen-cpuid.py's deep_deps)."""
    direct: dict[int, list[int]] = {}
    for name, deps in DEPS.items():
        out = []
        for d in deps:
            if d.startswith("range:"):
                _, first, count = d.split(":")
                start = feature(first)
                out += [i for i, _ in FEATURES.values() if start <= i <= start + int(count)]
            elif d in FEATURES:
                out.append(feature(d))
        direct[feature(name)] = out
    deep: dict[int, int] = {}
    for f in direct:
        seen: set[int] = set()
        todo = list(direct[f])
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.add(x)
                todo += direct.get(x, [])
        deep[f] = sum(1 << x for x in seen)
    return deep


def sanitise(fs: int) -> int:
    """Xen's sanitise_featureset: clamp to known features, and drop whatever depends on a missing one."""
    fs &= KNOWN
    for f, dependants in _deep_deps().items():
        if not fs >> f & 1:
            fs &= ~dependants
    return fs


def regbit(name: str) -> int:
    """The feature's bit within its CPUID register."""
    return 1 << (feature(name) % 32)


def _bit(fs: int, name: str) -> bool:
    return bool(fs >> feature(name) & 1)


def _set(fs: int, name: str, on: bool = True) -> int:
    return fs | (1 << feature(name)) if on else fs & ~(1 << feature(name))


# -- policies as dicts of leaves ------------------------------------------------------------------------

def _get(p: Policy, leaf: int, sub: int = 0) -> list[int]:
    return list(p.get((leaf, sub), (0, 0, 0, 0)))


def _put(p: Policy, leaf: int, sub: int, regs: Iterable[int]) -> None:
    p[(leaf, sub)] = tuple(r & 0xFFFFFFFF for r in regs)        # type: ignore[assignment]


def to_featureset(p: Policy) -> int:
    fs = 0
    for word, (leaf, sub, reg) in WORD_LOCATIONS.items():
        fs |= _get(p, leaf, sub)[reg] << (32 * word)
    return fs


def from_featureset(p: Policy, fs: int) -> None:
    """x86_cpu_featureset_to_policy: each featureset word replaces its register."""
    for word, (leaf, sub, reg) in WORD_LOCATIONS.items():
        regs = _get(p, leaf, sub)
        regs[reg] = (fs >> (32 * word)) & 0xFFFFFFFF
        _put(p, leaf, sub, regs)


def _max_leaf(p: Policy) -> int:
    return _get(p, 0)[0]


def _max_extd(p: Policy) -> int:
    return _get(p, 0x80000000)[0]


def _set_max_leaf(p: Policy, value: int) -> None:
    regs = _get(p, 0)
    regs[0] = value
    _put(p, 0, 0, regs)


def _set_max_extd(p: Policy, value: int) -> None:
    regs = _get(p, 0x80000000)
    regs[0] = value
    _put(p, 0x80000000, 0, regs)


def _set_feat_max_subleaf(p: Policy, value: int) -> None:
    regs = _get(p, 7, 0)
    regs[0] = value
    _put(p, 7, 0, regs)


def xstate_size(p: Policy, xcr0: int) -> int:
    """xstate_uncompressed_size: the end of the furthest enabled component (legacy area + header: 576)."""
    size = 512 + 64
    for i in range(2, 63):
        if xcr0 >> i & 1:
            a, b, _, _ = _get(p, 0xD, i)
            size = max(size, a + b)
    return size


# -- Xen's steps ----------------------------------------------------------------------------------------

@cache
def raw_policy() -> Policy:
    """CPUID of Unicorn's emulated CPU, computed once per process (calculate_raw_cpu_policy)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x1000)
    uc.mem_write(0, b"\x0f\xa2\xf4")

    def raw(leaf: int, sub: int) -> Leaf:
        uc.reg_write(X.UC_X86_REG_RAX, leaf)
        uc.reg_write(X.UC_X86_REG_RCX, sub)
        uc.emu_start(0, 2)
        return tuple(uc.reg_read(r) & 0xFFFFFFFF for r in (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX,  # type: ignore
                                                            X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))

    p: Policy = {}
    for leaf in range(0, min(raw(0, 0)[0], NR_BASIC - 1) + 1):
        subs: Iterable[int] = (0,)
        if leaf == 4:
            subs = range(NR_CACHE)
        elif leaf == 7:
            subs = range(min(raw(7, 0)[0], NR_FEAT - 1) + 1)
        elif leaf == 0xB:
            subs = range(NR_TOPO)
        elif leaf == 0xD:
            subs = range(NR_XSTATE)
        for sub in subs:
            p[(leaf, sub)] = raw(leaf, sub)
    for leaf in range(0x80000000, min(raw(0x80000000, 0)[0], 0x80000000 + NR_EXTD - 1) + 1):
        p[(leaf, 0)] = raw(leaf, 0)
    p[(MSR_KEY, 0)] = (0, 0, 0, 0)          # no MSR_ARCH_CAPABILITIES on this CPU model
    a, b, c, d = p[(1, 0)]
    p[(1, 0)] = (a, b, c & ~regbit("OSXSAVE"), d)
    if (7, 0) in p:
        a, b, c, d = p[(7, 0)]
        p[(7, 0)] = (a, b, c & ~regbit("OSPKE"), d)
    for sub in (0, 1):
        if (0xD, sub) in p:
            a, _, c, d = p[(0xD, sub)]
            p[(0xD, sub)] = (a, 0, c, d)
    return p


def _recalculate_xstate(p: Policy) -> None:
    fs = to_featureset(p)
    da1 = _get(p, 0xD, 1)[0]
    for sub in range(NR_XSTATE):
        p.pop((0xD, sub), None)
    if not _bit(fs, "XSAVE"):
        return
    xstates = XSTATE_FP_SSE
    if _bit(fs, "AVX"):
        xstates |= XSTATE_YMM
    if _bit(fs, "MPX"):
        xstates |= XSTATE_BNDREGS | XSTATE_BNDCSR
    if _bit(fs, "AVX512F"):
        xstates |= XSTATE_AVX512
    if _bit(fs, "PKU"):
        xstates |= XSTATE_PKRU
    if _bit(fs, "AMX_TILE"):
        xstates |= XSTATE_AMX
    raw = raw_policy()
    for i in range(2, 63):
        if xstates >> i & 1:
            a, b, c, _ = _get(raw, 0xD, i)
            ecx_mask = 2 if da1 & regbit("XSAVEC") else 0          # XSTATE_ALIGN64
            _put(p, 0xD, i, (a, b, c & ecx_mask, 0))
    _put(p, 0xD, 0, (xstates & 0xFFFFFFFF, 0, xstate_size(p, xstates), xstates >> 32))
    _put(p, 0xD, 1, (da1, 0, 0, 0))


def _recalculate_misc(p: Policy) -> None:
    """recalculate_misc for an Intel CPU: reserved fields clobbered, what guests must not see hidden."""
    a, b, c, d = _get(p, 1)
    _put(p, 1, 0, (a & 0x0FFF0FFF, b & 0x00FFFFFF, c, d))      # processor type; APIC id is dynamic
    for leaf in (3, 5, 6, 8, 9, 0xC):
        p.pop((leaf, 0), None)
    for sub in range(NR_TOPO):
        p.pop((0xB, sub), None)
    a, b, c, d = _get(p, 2)
    if (2, 0) in p:
        _put(p, 2, 0, ((a & ~0xFF) | 1, b, c, d))              # l2_nr_queries fixed to 1
    for leaf in range(0x80000000, 0x80000000 + NR_EXTD):
        if (leaf, 0) not in p:
            continue
        a, b, c, d = p[(leaf, 0)]
        if leaf == 0x80000000:
            b = c = d = 0                                      # vendor string: Intel returns zeros
        elif leaf == 0x80000001:
            a = b = 0
        elif leaf == 0x80000005:
            a = b = c = d = 0
        elif leaf == 0x80000006:
            a = b = d = 0
        elif leaf == 0x80000007:
            a = b = c = 0
        elif leaf == 0x80000008:
            a &= 0xFFFF
            c = d = 0
        p[(leaf, 0)] = (a, b, c, d)


# Features of the CPU model that Xen, booted on it, would not use (as with `cpuid=no-...` on its command line,
# which clears them from the host policy): RDRAND and RDSEED return host randomness (runs would not be
# reproducible); wr{fs,gs}base skip the non-canonical #GP that guests rely on.
MODEL_LIMITS = ("RDRAND", "RDSEED", "FSGSBASE")


@cache
def host_policy() -> Policy:
    p = dict(raw_policy())
    fs = to_featureset(p)
    for name in MODEL_LIMITS:
        fs = _set(fs, name, False)
    from_featureset(p, fs)
    _set_max_leaf(p, min(_max_leaf(p), NR_BASIC - 1))
    if (7, 0) in p:
        _set_feat_max_subleaf(p, min(_get(p, 7)[0], NR_FEAT - 1))
    _set_max_extd(p, 0x80000000 | min(_max_extd(p) & 0xFFFF, NR_EXTD - 1))
    _recalculate_xstate(p)
    p.pop((0xA, 0), None)                                      # vPMU off
    return p


def _common_adjustments(fs: int) -> int:
    fs = _set(fs, "HYPERVISOR")
    if _bit(fs, "IBRSB"):
        fs = _set(fs, "STIBP")
    if _bit(fs, "IBRS"):
        fs = _set(fs, "AMD_STIBP")
    if _bit(to_featureset(host_policy()), "IBRSB"):
        fs = _set(fs, "IBPB")
    return fs


@cache
def pv_max_policy() -> Policy:
    p = dict(host_policy())
    _recalculate_misc(p)
    _set_max_leaf(p, NR_BASIC - 1)
    _set_feat_max_subleaf(p, NR_FEAT - 1)
    _set_max_extd(p, 0x80000000 + NR_EXTD - 1)
    fs = to_featureset(p) & PV_MAX_MASK
    fs = _set(fs, "X2APIC")                     # tolerated for incoming VMs, never usable
    fs = _set(fs, "IBRSB", False)               # MSR_SPEC_CTRL not virtualised for PV here
    fs = _set(fs, "IBRS", False)
    fs = _set(fs, "SRSO_US_NO", False)
    for name in ("ARCH_CAPS", "RSBA", "RRSBA", "MD_CLEAR", "FB_CLEAR", "RFDS_CLEAR"):   # Intel
        fs = _set(fs, name)
    if _bit(fs, "RTM"):
        fs = _set(fs, "RTM_ALWAYS_ABORT")
    for name in ("HTT", "CMP_LEGACY", "ERMS"):
        fs = _set(fs, name)
    fs = sanitise(_common_adjustments(fs))
    from_featureset(p, fs)
    _recalculate_xstate(p)
    p.pop((0x8000000A, 0), None)                # no SVM for PV
    return p


@cache
def pv_default_policy() -> Policy:
    p = dict(pv_max_policy())
    host = host_policy()
    _set_max_leaf(p, _max_leaf(host))
    _set_feat_max_subleaf(p, _get(host, 7)[0])
    _set_max_extd(p, _max_extd(host))
    fs = to_featureset(p) & PV_DEF_MASK
    fs = _common_adjustments(fs)
    host_fs = to_featureset(host)
    for name in ("MD_CLEAR", "FB_CLEAR", "RFDS_CLEAR", "HTT", "CMP_LEGACY", "ERMS"):
        if not _bit(host_fs, name):
            fs = _set(fs, name, False)
    fs = sanitise(fs)
    if _bit(fs, "ARCH_CAPS") and (_bit(host_fs, "RSBA") or _bit(host_fs, "RRSBA")):
        fs = _set(fs, "RRSBA" if _bit(fs, "EIBRS") else "RSBA")
    from_featureset(p, fs)
    _recalculate_xstate(p)
    return p


@cache
def pv_policy() -> Policy:
    """The policy of a PV domU: the default as libxl applies it, then recalculate_cpuid_policy."""
    p = dict(pv_default_policy())
    host, mx = host_policy(), pv_max_policy()
    host_fs = to_featureset(host)
    fs = to_featureset(p)
    fs = _set(fs, "HTT", _bit(host_fs, "HTT"))                # xc_cpuid_apply_policy, PV: host topology bits
    fs = _set(fs, "CMP_LEGACY", _bit(host_fs, "CMP_LEGACY"))
    fs = _set(fs, "ITSC", False)
    _set_max_leaf(p, min(_max_leaf(p), _max_leaf(mx)))
    _set_feat_max_subleaf(p, min(_get(p, 7)[0], _get(mx, 7)[0]))
    _set_max_extd(p, 0x80000000 | min(_max_extd(p) & 0xFFFF, NR_EXTD_INTEL - 1))
    fs &= to_featureset(mx)
    if _max_leaf(p) < 0xD:
        fs = _set(fs, "XSAVE", False)
    fs = sanitise(fs)
    fpu_bits = (1 << feature("FDP_EXCP_ONLY")) | (1 << feature("NO_FPU_SEL"))
    fs = (fs & ~fpu_bits) | (host_fs & fpu_bits)
    from_featureset(p, fs)
    a, b, c, d = _get(p, 1)
    _put(p, 1, 0, (a, (b & ~0xFF00) | (_get(mx, 1)[1] & 0xFF00), c, d))      # clflush size from max
    a, b, c, d = _get(p, 0x80000008)
    phys = max(min(a & 0xFF, _get(mx, 0x80000008)[0] & 0xFF), 36)
    lin = 48 if _bit(fs, "LM") else 32
    _put(p, 0x80000008, 0, ((a & ~0xFFFF) | (lin << 8) | phys, b, c, d))
    _recalculate_xstate(p)
    _recalculate_misc(p)
    for i in range(NR_CACHE):
        a, b, c, d = _get(p, 4, i)
        if 1 <= (a & 0x1F) <= 3:
            _put(p, 4, i, (a & 0xFFFFC3FF, b, c, d & 7))
        else:
            for j in range(i, NR_CACHE):
                p.pop((4, j), None)
            break
    p.pop((0xA, 0), None)                                     # vPMU off
    p.pop((0x8000000A, 0), None)                              # no SVM
    # Leaves past the maxima read as zero: drop them so the table is what guest_cpuid answers.
    for key in list(p):
        leaf, sub = key
        if leaf < 0x80000000 and leaf > _max_leaf(p) or leaf >= 0x80000000 and leaf != MSR_KEY and \
                leaf > _max_extd(p) or leaf == 7 and sub > _get(p, 7)[0]:
            if leaf != MSR_KEY:
                del p[key]
    return p


def arch_capabilities() -> int:
    """MSR_ARCH_CAPABILITIES as the policy offers it (featureset words 16 and 17)."""
    a, _, _, d = pv_policy().get((MSR_KEY, 0), (0, 0, 0, 0))
    return d << 32 | a


@cache
def _pv_featureset() -> int:
    return to_featureset(pv_policy())


def has(name: str) -> bool:
    """Whether the PV domain policy offers a feature."""
    return _bit(_pv_featureset(), name)


def xen_leaf(vcpu: "Vcpu", leaf: int, sub: int) -> Leaf:
    """Xen's leaves (cpuid_hypervisor_leaves)."""
    idx = leaf - XEN_CPUID_BASE
    if idx == 0:
        return (XEN_CPUID_BASE + XEN_CPUID_MAX_LEAF, 0x566E6558, 0x65584D4D, 0x4D4D566E)  # "XenVMMXenVMM"
    if idx == 1:
        return ((XEN_MAJOR << 16) | XEN_MINOR, 0, 0, 0)
    if idx == 2:
        # One hypercall page, placed by MSR 0x40000000 (HVM); PV: mmu_update's PRESERVE_AD is offered.
        return (1, 0x40000000, XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD, 0)
    if idx == 3:
        if sub == 0:
            return (0, 0, 1_000_000, 0)         # TSC mode native, 1 GHz guest TSC (kHz)
        if sub == 2:
            return (1_000_000, 0, 0, 0)
        return (0, 0, 0, 0)
    return (0, 0, 0, 0)


def guest_cpuid(vcpu: "Vcpu", leaf: int, sub: int, via_ud: bool = False) -> Leaf:
    """What `cpuid` with eax=leaf, ecx=sub returns to this vCPU. `via_ud`: the forced-emulation (enlightened)
    cpuid, which Xen tells apart by the #UD it is serving."""
    if XEN_CPUID_BASE <= leaf <= XEN_CPUID_BASE + 0x1FF:
        if leaf - XEN_CPUID_BASE > XEN_CPUID_MAX_LEAF:
            return (0, 0, 0, 0)
        return xen_leaf(vcpu, leaf, sub)
    p = pv_policy()
    # First pass (Xen's guest_cpuid): out-of-range leaves and subleaves read as zero.
    if leaf < NR_BASIC:
        if leaf > _max_leaf(p):
            return (0, 0, 0, 0)
        if leaf == 4 and sub >= NR_CACHE or leaf == 7 and sub > _get(p, 7)[0] or \
                leaf == 0xB and sub >= NR_TOPO or leaf == 0xD and (not has("XSAVE") or sub >= NR_XSTATE):
            return (0, 0, 0, 0)
    elif 0x80000000 <= leaf < 0x80000000 + NR_EXTD:
        if leaf & 0xFFFF > _max_extd(p) & 0xFFFF:
            return (0, 0, 0, 0)
    else:
        return (0, 0, 0, 0)
    key = (leaf, sub if leaf in SUBLEAF_LEAVES else 0)
    a, b, c, d = p.get(key, (0, 0, 0, 0))
    if leaf == 1:
        b &= 0x00FFFFFF                                   # APIC id 0: PV topology is not virtualised
        # OSXSAVE: the guest's CR4.OSXSAVE, or -- Xen's de facto PV ABI -- leaked into the enlightened
        # (forced-emulation) cpuid of the guest kernel when the policy offers XSAVE.
        if vcpu.cr4_ctl & CR4_OSXSAVE or (has("XSAVE") and via_ud and vcpu.kernel_mode):
            c |= regbit("OSXSAVE")
    elif leaf == 0xD and sub == 0:
        b = xstate_size(p, vcpu.xcr0)
    return (a, b, c, d)


def emulate_cpuid(vcpu: "Vcpu", via_ud: bool = False) -> None:
    """Complete a cpuid: eax/ecx in, eax/ebx/ecx/edx out (the caller moves rip on)."""
    uc = vcpu.uc
    leaf = uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF
    sub = uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
    regs = guest_cpuid(vcpu, leaf, sub, via_ud)
    for r, v in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX), regs):
        uc.reg_write(r, v)
