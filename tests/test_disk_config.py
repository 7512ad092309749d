"""Disk specifications as xl reads them (xl-disk-configuration(5)), vdev numbers (xen-vbd-interface(7)) and
the block hotplug step's checks of an image."""
from __future__ import annotations

import pytest

from miniguest.toolstack.disk import (DiskError, parse_cli_disk, parse_disk_spec, prepare_disk, vdev_to_devid,
                                      xvd_name)


@pytest.mark.parametrize("vdev,devid", [
    ("xvda", 51712), ("xvdb", 51728), ("xvda1", 51713), ("xvdp15", 51967), ("xvdq", (1 << 28) | (16 << 8)),
    ("xvdaa", (1 << 28) | (26 << 8)), ("xvda16", (1 << 28) | 16), ("d0p0", 51712), ("d1p2", 51730),
    ("d536p37", (1 << 28) | (536 << 8) | 37), ("hda", 768), ("hdb", 832), ("hdc2", 5634), ("sdb3", 2067),
    ("51712", 51712), ("0xca00", 51712)])
def test_vdev_numbers(vdev, devid):
    assert vdev_to_devid(vdev) == devid


@pytest.mark.parametrize("vdev", ["xvd", "xvda0", "xvda01", "xvdA", "hde", "sdq", "vda", "xvda256", ""])
def test_bad_vdevs(vdev):
    with pytest.raises(DiskError):
        vdev_to_devid(vdev)


def test_xvd_names():
    assert [xvd_name(i) for i in (0, 1, 25, 26, 27, 701, 702)] == \
        ["xvda", "xvdb", "xvdz", "xvdaa", "xvdab", "xvdzz", "xvdaaa"]
    assert all(vdev_to_devid(xvd_name(i)) == ((202 << 8) | (i << 4) if i < 16 else (1 << 28) | (i << 8))
               for i in range(800))


@pytest.mark.parametrize("text", [
    "/dev/vg/guest-volume,,hda", "/dev/vg/guest-volume,raw,hda,rw",
    "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume", "raw:/dev/vg/guest-volume,hda,w",
    "vg/guest-volume,,hda", "phy:/dev/vg/guest-volume,hda,w"])
def test_equivalent_specs(text):
    s = parse_disk_spec(text)
    assert (s.target, s.format, s.vdev, s.readwrite, s.is_cdrom) == ("/dev/vg/guest-volume", "raw", "hda", True,
                                                                     False)


@pytest.mark.parametrize("text", [
    "/root/image.iso,,hdc,cdrom", "/root/image.iso,,hdc,,cdrom", "/root/image.iso,raw,hdc,devtype=cdrom",
    "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso"])
def test_equivalent_cdrom_specs(text):
    s = parse_disk_spec(text)
    assert (s.target, s.format, s.vdev, s.readwrite, s.is_cdrom) == ("/root/image.iso", "raw", "hdc", False, True)


def test_spec_details():
    s = parse_disk_spec("/img,qcow2,xvdb,ro,no-discard,untrusted")
    assert (s.format, s.vdev, s.readwrite, s.discard, s.trusted) == ("qcow2", "xvdb", False, False, False)
    assert parse_disk_spec("vdev=xvda, target=/a,b c").target == "/a,b c"      # target= eats the rest
    for bad, why in [("/img", "no vdev"), ("/img,raw,xvda,rw,extra", "too many"), ("/img,vmdk,xvda", "format"),
                     ("/img,raw,xvda,rx", "access"), ("colour=red,/img,,xvda", "unknown parameter"),
                     ("vdev=xvda,vdev=xvdb,target=/a", "twice"), ("/img,,vda", "virtual disk identifier"),
                     ("backend=driverdom,/img,,xvda", "dom0")]:
        with pytest.raises(DiskError, match=why):
            parse_disk_spec(bad)


def test_cli_disks():
    assert parse_cli_disk("/a.img", 0).vdev == "xvda"
    assert parse_cli_disk("/b.img", 1).vdev == "xvdb"
    s = parse_cli_disk("/c.img,vdev=xvdc,ro", 0)
    assert (s.target, s.vdev, s.readwrite) == ("/c.img", "xvdc", False)
    with pytest.raises(DiskError, match="unknown option"):
        parse_cli_disk("/c.img,fast", 0)
    with pytest.raises(DiskError, match="identifier"):
        parse_cli_disk("/c.img,vdev=nope", 0)


def test_hotplug_checks(tmp_path):
    good = tmp_path / "good.img"
    good.write_bytes(bytes(4096))
    s = prepare_disk(parse_disk_spec(f"{good},raw,xvda,rw"))
    assert s.size == 4096 and s.physical_path == str(good)
    odd = tmp_path / "odd.img"
    odd.write_bytes(bytes(1000))
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    for path, why in [(odd, "not a whole number of 512-byte sectors"), (empty, "empty image"),
                      (tmp_path / "missing.img", "No such file"), (tmp_path, "not a regular file")]:
        with pytest.raises(DiskError, match=why):
            prepare_disk(parse_disk_spec(f"{path},raw,xvda,rw"))
