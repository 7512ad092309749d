"""populate_domain writes what libxl writes, with libxl's permissions, and the guest sees it that way."""
from __future__ import annotations

from xs_testlib import err, make_guest

from miniguest.abi import xs_wire as W
from miniguest.backends.xenstore.daemon import populate_domain
from miniguest.backends.xenstore.store import Store


def perms(daemon, path):
    return [str(p) for p in daemon.dom0.get_perms(path)]


def test_domain_tree_and_permissions(daemon):
    populate_domain(daemon, 3, name="vm3", uuid="12345678-aaaa-bbbb-cccc-1234567890ab", memory_kib=131072,
                    store_port=5, store_mfn=0x1234, console_port=6, console_mfn=0x5678, vcpus=2)
    s = daemon.dom0
    dom = "/local/domain/3"
    assert s.read(f"{dom}/name") == b"vm3"
    assert s.read(f"{dom}/domid") == b"3"
    assert s.read(f"{dom}/vm") == b"/vm/12345678-aaaa-bbbb-cccc-1234567890ab"
    assert s.read("/vm/12345678-aaaa-bbbb-cccc-1234567890ab/uuid") == b"12345678-aaaa-bbbb-cccc-1234567890ab"
    assert s.read(f"{dom}/memory/target") == b"131072"
    assert s.read(f"{dom}/memory/static-max") == b"131072"
    assert s.read(f"{dom}/store/port") == b"5"
    assert s.read(f"{dom}/store/ring-ref") == str(0x1234).encode()
    assert s.read(f"{dom}/console/ring-ref") == str(0x5678).encode()
    assert s.read(f"{dom}/console/port") == b"6"
    assert s.read(f"{dom}/console/type") == b"xenconsoled"
    assert s.read(f"{dom}/console/limit") == b"1048576"
    assert s.ls(f"{dom}/cpu") == ["0", "1"]
    assert s.read(f"{dom}/cpu/1/availability") == b"online"
    assert s.read(f"{dom}/control/platform-feature-xs_reset_watches") == b"1"
    assert s.read("/local/domain/0/name") == b"Domain-0"
    assert perms(daemon, dom) == ["n0", "r3"]
    assert perms(daemon, f"{dom}/name") == ["n0", "r3"]
    assert perms(daemon, f"{dom}/control/shutdown") == ["n3"]
    assert perms(daemon, f"{dom}/data") == ["n3"]
    assert perms(daemon, f"{dom}/console/port") == ["n0", "r3"]
    assert perms(daemon, f"{dom}/console/type") == ["n3", "r0"]
    assert perms(daemon, "/libxl/3") == ["n0"]


def test_guest_view_of_its_tree(daemon):
    g = make_guest(daemon, 4)
    assert g.call(W.XS_READ, "domid") == b"4"
    assert err(g, W.XS_WRITE, b"name\0renamed") == "EACCES"          # dom0's
    assert err(g, W.XS_WRITE, b"control/feature-poweroff\0" + b"1") == ""   # the guest's to answer
    assert err(g, W.XS_WRITE, b"data/anything\0ok") == ""
    assert err(g, W.XS_READ, b"/libxl/4/type\0") == "EACCES"
    assert err(g, W.XS_READ, b"/local/domain/0/name\0") == "EACCES"


def test_release_removes_only_what_the_domain_owns(daemon):
    make_guest(daemon, 4)
    daemon.release_domain(4)
    s = daemon.dom0
    assert s.read("/local/domain/4/name") == b"guest4"      # dom0's nodes stay for the toolstack
    assert not s.exists("/local/domain/4/data")
    assert not s.exists("/local/domain/4/control/shutdown")


def test_populate_a_bare_store_and_repopulate():
    st = Store()
    for _ in range(2):   # libxl removes an old tree first
        populate_domain(st, 9, name="x", uuid="u", memory_kib=1, store_port=1, store_mfn=1, console_port=2,
                        console_mfn=2)
    assert st.nodes["/local/domain/9/name"].value == b"x"
