"""SET_PERMS naming an owner domain that does not exist is ENOENT, as in C xenstored (do_set_perms after
domain_alloc_permrefs marks such an entry XS_PERM_IGNORE): otherwise the node, and every child created under
it, would belong to whichever domain is later created with that id."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from xs_testlib import err, make_guest

from miniguest.abi import xs_wire as W
from miniguest.backends.xenstore.daemon import XenstoreDaemon
from miniguest.backends.xenstore.errors import XenstoreError
from miniguest.backends.xenstore.perms import Perm


def test_dom0_cannot_give_a_node_to_a_domain_that_does_not_exist():
    from miniguest import Domain
    dom = Domain.from_elf("hello")                   # the toolstack's daemon asks the hypervisor about domids
    store = dom.store
    store.write("/local/domain/1/data/x", "1")
    with pytest.raises(XenstoreError) as e:
        store.set_perms("/local/domain/1/data/x", ["n42"])
    assert e.value.name == "ENOENT"
    assert store.get_perms("/local/domain/1/data/x")[0].domid == 1        # unchanged
    store.set_perms("/local/domain/1/data/x", ["n0", "r1"])               # dom0 and the guest exist: fine
    store.write("/local/domain/1/data/x/child", "2")                      # children inherit a real owner
    assert [str(p) for p in store.get_perms("/local/domain/1/data/x/child")] == ["n0", "r1"]
    dom.close()


def test_the_error_is_enoent_before_eperm_for_a_guest(daemon: XenstoreDaemon):
    """A guest may not change the owner of its node (EPERM), but naming a domain that does not exist is
    ENOENT first, as in C xenstored; a non-owner entry naming one is accepted (C keeps it, ignored)."""
    daemon.hypervisor_has_domain = lambda domid: domid in (5, 6)
    g = make_guest(daemon, 5)
    assert err(g, W.XS_WRITE, b"/local/domain/5/data/n\0v") == ""
    assert err(g, W.XS_SET_PERMS, b"/local/domain/5/data/n\0n42\0") == "ENOENT"
    assert err(g, W.XS_SET_PERMS, b"/local/domain/5/data/n\0n6\0") == "EPERM"
    assert err(g, W.XS_SET_PERMS, b"/local/domain/5/data/n\0n5\0r6\0") == ""
    assert err(g, W.XS_WRITE, b"/local/domain/5/data/n/c\0v") == ""
    assert daemon.dom0.get_perms("/local/domain/5/data/n/c")[0] == Perm("n", 5)


@pytest.mark.skipif(shutil.which("xenstore-chmod") is None, reason="needs xenstore-utils")
def test_xenstore_chmod_to_a_missing_domain_fails(tmp_path):
    """Xen's own client, through the store socket of a booted guest."""
    from guestlib import CLI, ROOT, wait_until
    sock, ready = tmp_path / "xs.sock", tmp_path / "ready"
    p = subprocess.Popen(CLI + ["boot", "minios", "-c", "ticks=0", "--quiet", "--store-socket", str(sock),
                                "--ready-file", str(ready)], cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    env = dict(os.environ, XENSTORED_PATH=str(sock))

    def xs(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=60)
    try:
        wait_until(ready.exists, what="the store socket")
        assert xs("xenstore-write", "/local/domain/1/data/x", "1").returncode == 0
        bad = xs("xenstore-chmod", "/local/domain/1/data/x", "n42")
        assert bad.returncode != 0
        assert xs("xenstore-ls", "-p", "/local/domain/1/data").stdout.split("(")[1].startswith("n1")
        assert xs("xenstore-chmod", "/local/domain/1/data/x", "n0", "r1").returncode == 0
        assert xs("xenstore-write", "/local/domain/1/control/shutdown", "poweroff").returncode == 0
        p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
