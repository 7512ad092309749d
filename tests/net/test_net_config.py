"""Network interfaces as a user asks for them: `--net` and `--net-pcap` on the command line, `vif = [...]` in
an xl.cfg file -- what lands in the store, what the guest does with it, and one-line errors for the rest."""
from __future__ import annotations

import subprocess
import sys

import pytest
from netlib import Gateway

from miniguest.toolstack.network import VifSpec, parse_net_option, parse_vif_entry
from miniguest.toolstack.xlcfg import ConfigError

from netns import GATEWAY, GUEST_ADDRESS
from pyfront import PyGuest

MINIGUEST = [sys.executable, "-m", "miniguest.cli.main"]


@pytest.mark.parametrize("text,spec", [
    ("user", VifSpec(net="user")),
    ("none,mac=00:16:3E:AA:bb:01", VifSpec(net="none", mac="00:16:3e:aa:bb:01")),
    ("socket:/tmp/a b,devid=3,pcap=/tmp/x.pcap,mtu=9000",
     VifSpec(net="socket:/tmp/a b", devid=3, pcap="/tmp/x.pcap", mtu=9000)),
])
def test_net_options(text, spec):
    assert parse_net_option(text) == spec


@pytest.mark.parametrize("text,words", [
    ("tap:eth0", "unknown network host side"),
    ("socket:", "unknown network host side"),
    ("user,mac=01:00:5e:00:00:01", "not a unicast MAC"),
    ("user,mac=00:16:3e:zz:00:01", "not a unicast MAC"),
    ("user,devid=x", "not a device number"),
    ("user,mtu=20", "not an MTU"),
    ("user,colour=red", "unknown vif key 'colour'"),
    ("user,net=none", "the host side is the first word"),
])
def test_bad_net_options(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_net_option(text)


def test_xl_vif_entries():
    assert parse_vif_entry("mac=00:16:3e:74:3d:76,model=rtl8139,bridge=xenbr0", "cfg") == \
        VifSpec(net="user", mac="00:16:3e:74:3d:76")
    assert parse_vif_entry("", "cfg") == VifSpec()
    assert parse_vif_entry("net=socket:/s,trusted,rate=10Mb/s", "cfg") == VifSpec(net="socket:/s")
    with pytest.raises(ConfigError, match="only dom0 serves vifs"):
        parse_vif_entry("backend=2", "cfg")
    with pytest.raises(ConfigError, match="'mac' needs a value"):
        parse_vif_entry("mac", "cfg")


def test_two_vifs_in_the_store_as_libxl_writes_them(tmp_path):
    from miniguest.toolstack.network import add_vifs
    g = PyGuest()
    try:
        add_vifs(g.dom, [VifSpec(net="none", mac="00:16:3e:00:00:0a"), VifSpec(net="none")])
        assert g.ls("device/vif") == ["0", "1"]
        assert g.read("device/vif/0/mac") == "00:16:3e:00:00:0a"
        mac1 = g.read("device/vif/1/mac")
        assert mac1.startswith("00:16:3e:") and mac1 != "00:16:3e:00:00:0a"
        for devid in (0, 1):
            be = g.read(f"device/vif/{devid}/backend")
            assert be == f"/local/domain/0/backend/vif/{g.domid}/{devid}"
            assert g.dom.store.read(f"{be}/state") == b"2"               # InitWait: netback probed it
            assert g.dom.store.read(f"{be}/feature-rx-copy") == b"1"
        with pytest.raises(ConfigError, match="devid 1 is used twice"):
            add_vifs(g.dom, [VifSpec(net="none", devid=1)])
    finally:
        g.close()


def test_an_xl_cfg_vif_on_a_socket(tmp_path):
    from guestlib import SAMPLES
    gw = Gateway(str(tmp_path / "seg.sock"))
    cfg = tmp_path / "guest.cfg"
    cfg.write_text(f'kernel = "{SAMPLES}/minios.elf"\nmemory = 32\nname = "netguest"\n'
                   f'extra = "net=echo ip={GUEST_ADDRESS} gw={GATEWAY}"\n'
                   f"vif = [ 'mac=00:16:3e:12:34:56,bridge=xenbr0,net=socket:{gw.wire.path}' ]\n")
    try:
        r = subprocess.run(MINIGUEST + ["boot", str(cfg), "--net-pcap", str(tmp_path / "cfg.pcap")],
                           capture_output=True, text=True, timeout=120)
    finally:
        gw.close()
    assert r.returncode == 0, r.stderr
    assert "netfront: mac is 00:16:3e:12:34:56" in r.stdout
    assert "netfront test passed: 5/5 checks ok" in r.stdout
    assert (tmp_path / "cfg.pcap").stat().st_size > 24


@pytest.mark.parametrize("args,words", [
    (["--net-pcap", "/tmp/x.pcap"], "--net-pcap needs a network interface"),
    (["--net", "bogus"], "unknown network host side 'bogus'"),
    (["--net", "user,mac=ff:ff:ff:ff:ff:ff"], "not a unicast MAC"),
])
def test_boot_says_what_is_wrong_in_one_line(args, words):
    r = subprocess.run(MINIGUEST + ["boot", "hello"] + args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_an_xl_cfg_with_a_bad_vif(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text('kernel = "hello.elf"\nvif = "mac=00:16:3e:00:00:01"\n')
    r = subprocess.run(MINIGUEST + ["boot", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "vif must be a list" in r.stderr
