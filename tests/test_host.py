"""The host interface (hypervisor/host.py) as dom0's daemons use it: a backend mapping a guest's grant
(GNTTABOP_map_grant_ref issued by dom0), and the domain lifecycle calls."""
from __future__ import annotations

import struct

import pytest
from guestlib import boot

from miniguest import samples
from miniguest.hypervisor.host import GrantError
from miniguest.regress.snapshot import Snapshot, SnapshotError

GTF_permit_access, GTF_readonly, GTF_reading, GTF_writing = 1, 1 << 2, 1 << 3, 1 << 4
GNTST_general_error, GNTST_bad_domain, GNTST_bad_gntref = -1, -2, -3


@pytest.fixture(scope="module")
def minios():
    dom = boot(samples.path("minios"), cmdline="ticks=1")      # Mini-OS sets up 4 grant table frames
    assert dom.grants.nr_frames == 4
    yield dom
    dom.close()


def grant(dom, ref: int, domid: int, pfn: int, flags: int) -> int:
    """What the guest's gnttab_grant_access writes into its table: frame, domid, then the flags."""
    mfn = dom.p2m[pfn]
    ma = dom.grants.frames[ref // 512] * 4096 + (ref % 512) * 8
    dom.mem.mv[ma:ma + 8] = struct.pack("<HHI", flags, domid, mfn)
    return ma


def entry_flags(dom, ma: int) -> int:
    return struct.unpack_from("<H", dom.mem.mv, ma)[0]


def data_pfn(dom, first: int = 100) -> int:
    """A guest page that is plain data (no page-table or descriptor type)."""
    return next(p for p in range(first, dom.nr_pages) if dom.frames.type[dom.p2m[p]] in (0, 7))


def test_a_backend_maps_a_grant_writes_through_it_and_unmaps(minios):
    dom, host = minios, minios.host
    pfn = data_pfn(dom)
    ma = grant(dom, 10, 0, pfn, GTF_permit_access)
    m = host.map_grant_ref(dom.domid, 10)
    assert entry_flags(dom, ma) == GTF_permit_access | GTF_reading | GTF_writing
    assert dom.frames.type[dom.p2m[pfn]] == 7                         # dom0's writable type reference
    m.view[0:5] = b"hello"
    assert bytes(dom.mem.frame(dom.p2m[pfn])[0:5]) == b"hello"
    ro = host.map_grant_ref(dom.domid, 10, readonly=True)             # a second, read-only mapping
    assert bytes(ro.view[0:5]) == b"hello" and ro.view.readonly
    view = m.view
    host.unmap_grant_ref(m)
    assert entry_flags(dom, ma) == GTF_permit_access | GTF_reading      # the read-only pin remains
    with pytest.raises(ValueError):
        view[0]                                                        # released with the mapping
    assert m.view is None
    host.unmap_grant_ref(ro)
    assert entry_flags(dom, ma) == GTF_permit_access                   # guest may end access now
    with pytest.raises(ValueError):
        host.unmap_grant_ref(ro)


def test_a_page_table_granted_to_dom0_is_mapped_read_only_only(minios):
    # Xen's map_grant_ref takes a writable type reference for a writable host mapping (could_not_pin:
    # GNTST_general_error): dom0 never writes into a live page table of the guest.
    dom, host = minios, minios.host
    pfn = next(p for p in range(dom.nr_pages) if dom.frames.type[dom.p2m[p]] == 1)      # an L1
    ma = grant(dom, 14, 0, pfn, GTF_permit_access)
    with pytest.raises(GrantError) as info:
        host.map_grant_ref(dom.domid, 14)
    assert info.value.status == GNTST_general_error and entry_flags(dom, ma) == GTF_permit_access
    ro = host.map_grant_ref(dom.domid, 14, readonly=True)
    assert ro.view.readonly
    host.unmap_grant_ref(ro)


@pytest.mark.parametrize("ref,domid,flags,readonly,status", [
    (11, 5, GTF_permit_access, False, GNTST_general_error),            # granted to another domain
    (12, 0, 0, False, GNTST_general_error),                            # not (or no longer) granted
    (13, 0, GTF_permit_access | GTF_readonly, False, GNTST_general_error),   # writable map of a r/o grant
    (4 * 512, 0, GTF_permit_access, True, GNTST_bad_gntref),           # past the table the guest set up
])
def test_grants_dom0_may_not_map_are_refused_with_xens_status(minios, ref, domid, flags, readonly, status):
    if ref < 4 * 512:
        ma = grant(minios, ref, domid, 101, flags)
    with pytest.raises(GrantError) as info:
        minios.host.map_grant_ref(minios.domid, ref, readonly=readonly)
    assert info.value.status == status
    if ref < 4 * 512:
        assert entry_flags(minios, ma) == flags                         # no pin left behind


def test_a_grant_of_an_unknown_domain_is_bad_domain(minios):
    with pytest.raises(GrantError) as info:
        minios.host.map_grant_ref(77, 8)
    assert info.value.status == GNTST_bad_domain


def test_a_domain_with_a_grant_mapped_by_dom0_is_not_snapshotted(minios):
    grant(minios, 14, 0, 102, GTF_permit_access)
    m = minios.host.map_grant_ref(minios.domid, 14, readonly=True)
    with pytest.raises(SnapshotError, match="grants mapped"):
        Snapshot.capture(minios)
    minios.host.unmap_grant_ref(m)
    Snapshot.capture(minios)


def test_domain_lifecycle_through_the_host(minios):
    host = minios.host
    assert host.domain(minios.domid) is minios and host.domain_state(minios.domid) == "shutdown"
    with pytest.raises(LookupError):
        host.domain(77)
    regs = host.get_vcpu_context(minios.domid, 0)
    assert regs["rip"] == minios.vcpus[0].rip and regs["cr3"] >> 12 == minios.vcpus[0].guest_table
