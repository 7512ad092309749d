"""maxmem (xl.cfg's `maxmem=`): a domain may balloon up to it, no further; a snapshot keeps it."""
from __future__ import annotations

import pytest

from miniguest.regress.snapshot import Snapshot

from guestlib import SELFTEST, cli, facts, selftest


@pytest.mark.parametrize("maxmem,grown", [(None, 0), pytest.param(34, 512, marks=pytest.mark.slow), (31, 0)])
def test_growing_up_to_maxmem(maxmem, grown):
    dom = selftest("grow", maxmem=maxmem)
    f = facts(dom.console.text)
    assert dom.shutdown_reason == "poweroff"
    assert int(f["grown_pages"]) == grown
    assert dom.tot_pages == 32 * 256 + grown
    dom.close()


def test_maxmem_does_not_move_the_other_machine_frames():
    plain, big = selftest("layout"), selftest("layout", maxmem=64)
    assert plain.xen.shared_info_mfn == big.xen.shared_info_mfn and plain.p2m == big.p2m
    plain.close()
    big.close()


@pytest.mark.slow
def test_snapshot_keeps_the_room_to_grow():
    from miniguest import Domain
    dom = Domain.from_elf(SELFTEST, cmdline="grow", maxmem=33)
    restored = Snapshot.from_bytes(Snapshot.capture(dom).to_bytes()).restore()
    restored.run()
    assert facts(restored.console.text)["grown_pages"] == "256"
    dom.close()
    restored.close()


@pytest.mark.slow
def test_cli_maxmem():
    r = cli("boot", SELFTEST, "-c", "grow", "--maxmem", "33", "--quiet", "--console-log", "/dev/stdout")
    assert r.returncode == 0
    assert b"grown_pages = 256" in r.stdout


@pytest.mark.slow
def test_xl_config_maxmem(tmp_path):
    cfg = tmp_path / "g.cfg"
    cfg.write_text(f'kernel = "{SELFTEST}"\nmemory = 32\nmaxmem = 33\nextra = "grow"\n')
    r = cli("boot", str(cfg), "--quiet", "--console-log", "/dev/stdout")
    assert r.returncode == 0 and b"grown_pages = 256" in r.stdout
