"""Hostile host-side files and arguments: each is refused with one line on stderr and the documented exit
status, never a Python traceback (issue 9: kernel ELFs, xl.cfg files, snapshot and trace files, paths)."""
from __future__ import annotations

import json
import struct

import pytest

from miniguest.cli.main import main
from miniguest.regress.snapfile import Container
from miniguest.regress.snapshot import Snapshot
from miniguest.toolstack.libelf import ImageError, parse_kernel

from guestlib import HELLO, SELFTEST

HEADER = '{"format":"miniguest-trace","version":1,"meta":{}}\n'


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit status and stderr of `miniguest ARGV` (in-process: a traceback would fail the test)."""
    try:
        code = main(list(argv))
    except SystemExit as e:           # argparse
        code = e.code
    err = capsys.readouterr().err
    return code, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("miniguest: ") and "Traceback" not in err, err
    return err


# -- kernel ELF ---------------------------------------------------------------------------------------------
def _phdrs(data: bytes) -> list[int]:
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return [phoff + i * phentsize for i in range(phnum)]


def _shdrs(data: bytes) -> list[int]:
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    return [shoff + i * shentsize for i in range(shnum)]


def _with_note_offset(offset: int) -> bytes:
    data = bytearray(open(HELLO, "rb").read())
    notes = [o for o in _phdrs(data) if struct.unpack_from("<I", data, o)[0] == 4]      # PT_NOTE
    assert notes
    for o in notes:
        struct.pack_into("<Q", data, o + 8, offset)
    return bytes(data)


@pytest.mark.parametrize("offset", [1 << 63, (1 << 64) - 1, 1 << 40, 0x100000])
def test_elf_note_segment_offset_outside_the_file_is_a_bad_image(tmp_path, capsys, offset):
    bad = tmp_path / "bad.elf"
    bad.write_bytes(_with_note_offset(offset))
    code, err = run_cli(capsys, "boot", str(bad), "--quiet")
    assert code == 9 and "outside the" in one_line(err)


def test_elf_note_section_outside_the_file_and_huge_nobits_xen_guest(tmp_path):
    """Sections are read raw and bounded (Xen's libelf: elf_access_ok); a compressed or NOBITS section
    cannot make us inflate gigabytes."""
    data = bytearray(open(SELFTEST, "rb").read())
    for o in _shdrs(data):
        if struct.unpack_from("<I", data, o + 4)[0] == 7:                # SHT_NOTE: offset 1 << 62
            struct.pack_into("<Q", data, o + 0x18, 1 << 62)
    for o in _phdrs(data):
        if struct.unpack_from("<I", data, o)[0] == 4:                    # no PT_NOTE: use the sections
            struct.pack_into("<I", data, o, 0x6474E551)
    with pytest.raises(ImageError, match="outside the"):
        parse_kernel("x.elf", bytes(data))


def test_kernel_path_with_a_nul_and_a_directory(tmp_path):
    with pytest.raises(ImageError, match="not a valid path"):
        parse_kernel("/tmp/a\0b")
    with pytest.raises(ImageError, match="Is a directory"):
        parse_kernel(str(tmp_path))


# -- xl.cfg -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,message", [
    (b'kernel = "hello\xff.elf"\n', "not UTF-8"),
    (b'kernel = "/tmp/a\\x00b"\n', "NUL"),
    (b'kernel = "hello.elf"\nmemory = 1e999\n', "memory must be a number"),
    (b'kernel = "hello.elf"\nmemory = 12.5\n', "memory must be a number"),
    (b'kernel = "hello.elf"\nmaxmem = [1]\n', "maxmem must be a number"),
    (b'kernel = "hello.elf"\nfoo = {[]: 1}\n', "cannot parse"),
    (b'kernel = "hello.elf"\nfoo = {1, []}\n', "cannot parse"),
    (b'kernel = "hello.elf"\nfoo = ' + b"[" * 100000 + b"]" * 100000 + b"\n", "cannot parse"),
    (b'kernel = "hello.elf"\nfoo = ' + b"-" * 100000 + b"1\n", "cannot parse"),
    (b'kernel = "hello.elf"\nname = ["a"]\n', "name must be a string"),
    (b'kernel = "hello.elf"\non_crash = ["x"]\n', "on_crash"),
    (b'kernel = "hello.elf"\n' + b"#" * (2 << 20), "larger than"),
])
def test_bad_xl_cfg_is_one_line_exit_1(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.cfg"
    cfg.write_bytes(text)
    code, err = run_cli(capsys, "boot", str(cfg), "--quiet")
    assert code == 1 and message in one_line(err)


# -- trace files ----------------------------------------------------------------------------------------------
TRACE_CASES = [
    ('{"seq":1,"time":2,"kind":"hypercall","name":5,"subop":null,"result":0}', "name must be a string"),
    ('{"seq":1,"time":2,"kind":"xenstore","dir":"request","type":"READ","args":{"a":1}}', "args must be"),
    ('{"seq":1,"time":2,"kind":"xenstore","dir":"request","type":"READ","args":"abc"}', "args must be"),
    ('{"seq":1,"time":2,"kind":"idle","until":' + str(1 << 64) + '}', "until must be"),
    ('{"seq":1,"time":2,"kind":"idle","until":"soon"}', "until must be"),
    ('{"seq":1,"time":2,"kind":"x","a":' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
    ('{"seq":1,"time":2,"kind":"x","a":' + "[" * 500 + "]" * 500 + "}", "nested more than"),
    ('{"seq":1,"time":' + "9" * 5000 + ',"kind":"x"}', "not JSON"),
    ('{"seq":1,"time":' + str(1 << 70) + ',"kind":"x"}', "integer seq and time"),
    ('{"seq":1,"time":NaN,"kind":"x"}', "integer seq and time"),
    ('{"seq":true,"time":1,"kind":"x"}', "integer seq and time"),
]


@pytest.mark.parametrize("record,message", TRACE_CASES)
@pytest.mark.parametrize("command", ["show", "diff", "export"])
def test_bad_trace_records_are_one_line_for_show_diff_export(tmp_path, capsys, record, message, command):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(HEADER + record + "\n")
    good = tmp_path / "good.jsonl"
    good.write_text(HEADER + '{"seq":1,"time":2,"kind":"hypercall","name":"xen_version","subop":null}\n')
    argv = {"show": ["trace", "show", str(bad)], "diff": ["trace", "diff", str(good), str(bad)],
            "export": ["trace", "export", str(bad), "-o", str(tmp_path / "out.json")]}[command]
    code, err = run_cli(capsys, *argv)
    assert code == 2 and message in one_line(err)


@pytest.mark.parametrize("content,message", [
    ('{"format":"miniguest-trace","version":1,"meta":[1]}\n', "meta must be"),
    ('{"format":"miniguest-trace","version":' + "[" * 100 + "]" * 100 + ',"meta":{}}\n', "nested more than"),
])
def test_bad_trace_headers(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    code, err = run_cli(capsys, "trace", "show", str(bad))
    assert code == 2 and message in one_line(err)


def test_trace_files_that_are_not_files(tmp_path, capsys):
    code, err = run_cli(capsys, "trace", "show", "/dev/zero")       # bounded: no endless line
    assert code == 2 and "longer than" in one_line(err)
    code, err = run_cli(capsys, "trace", "show", str(tmp_path))
    assert code == 2 and "directory" in one_line(err)
    (tmp_path / "latin.jsonl").write_bytes(HEADER.encode() + b'{"seq":1,"time":1,"kind":"\xff"}\n')
    code, err = run_cli(capsys, "trace", "show", str(tmp_path / "latin.jsonl"))
    assert code == 2 and "UTF-8" in one_line(err)


def test_shown_and_exported_records_of_unknown_kinds_with_odd_fields(tmp_path, capsys):
    """Unknown kinds and fields are carried (the format says consumers ignore them) and printed safely."""
    t = tmp_path / "odd.jsonl"
    t.write_text(HEADER + '{"seq":1,"time":2,"kind":"future","name":{"a":[1,{"b":null}]},"x":1e308}\n'
                 + '{"seq":2,"time":3,"kind":"hypercall","name":"x","subop":[1],"errno":{},"in":[[[]]],'
                 + '"result":"?","blocked":3,"site":5}\n'
                 + '{"seq":3,"time":4,"kind":"xenstore","args":[1,null,{}]}\n'
                 + '{"seq":4,"time":5,"kind":"exception","rip":"start+0x3","cr2":[]}\n')
    assert run_cli(capsys, "trace", "show", str(t))[0] == 0
    assert run_cli(capsys, "trace", "export", str(t), "-o", str(tmp_path / "o.json"))[0] == 0
    json.loads((tmp_path / "o.json").read_text())


# -- snapshot files -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def snap_bytes() -> bytes:
    from miniguest import Domain
    dom = Domain.from_elf(HELLO)
    dom.run(until=lambda d: d.clock.now_ns() >= 50_000)
    data = Snapshot.capture(dom).to_bytes()
    dom.close()
    return data


def rewritten(data: bytes, change) -> bytes:
    c = Container.from_bytes(data)
    c.header = json.loads(json.dumps(c.header))
    change(c.header)
    return c.to_bytes()


def _nest(h: dict) -> None:
    h["config"]["cmdline"] = json.loads("[" * 100 + "]" * 100)


@pytest.mark.parametrize("change,message", [
    (lambda h: h["clock"].update(icount=None), "clock.icount must be an integer"),
    (lambda h: h["clock"].update(idle_ns="1"), "clock.idle_ns must be an integer"),
    (lambda h: h.update(clock=[]), "clock is not an object"),
    (lambda h: h.update(image=None), "image is not an object"),
    (lambda h: h["image"].update(name=7), "image.name must be a string"),
    (lambda h: h["config"].update(memory_mib="32"), "config.memory_mib"),
    (lambda h: h["domain"].update(state=[1]), "domain.state must be a string"),
    (_nest, "nested more than"),
])
@pytest.mark.parametrize("command", ["info", "run"])
def test_bad_snapshot_headers_are_one_line_exit_1(tmp_path, capsys, snap_bytes, change, message, command):
    bad = tmp_path / "bad.snap"
    bad.write_bytes(rewritten(snap_bytes, change))
    code, err = run_cli(capsys, "snapshot", command, str(bad), *(["--quiet"] if command == "run" else []))
    assert code == 1 and message in one_line(err)


def test_snapshot_header_nested_deeper_than_json_allows(tmp_path, capsys, snap_bytes):
    head = b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"
    bad = tmp_path / "deep.snap"
    bad.write_bytes(snap_bytes[:8] + struct.pack("<II", 1, len(head)) + head)
    for command in ("info", "run"):
        code, err = run_cli(capsys, "snapshot", command, str(bad))
        assert code == 1 and "nested too deeply" in one_line(err)


def test_snapshot_files_that_are_not_files(tmp_path, capsys):
    code, err = run_cli(capsys, "snapshot", "info", "/dev/zero")     # the magic is checked first
    assert code == 1 and "bad magic" in one_line(err)
    code, err = run_cli(capsys, "snapshot", "info", str(tmp_path))
    assert code == 1 and "directory" in one_line(err)


# -- command-line arguments ---------------------------------------------------------------------------------
def test_store_socket_that_cannot_be_created(tmp_path, capsys):
    code, err = run_cli(capsys, "boot", "hello", "--quiet", "--store-socket", str(tmp_path / "no" / "sock"))
    assert code == 1 and "--store-socket" in one_line(err)
    (tmp_path / "file").write_text("keep me")
    code, err = run_cli(capsys, "boot", "hello", "--quiet", "--store-socket", str(tmp_path / "file"))
    assert code == 1 and "--store-socket" in one_line(err)
    assert (tmp_path / "file").read_text() == "keep me"      # only a stale socket is ever replaced


@pytest.mark.parametrize("argv", [
    ["boot", "hello", "--max-insns", "-5"],
    ["snapshot", "save", "hello", "-o", "x.snap", "--at-ns", "-1"],
    ["snapshot", "save", "hello", "-o", "x.snap", "--after-hypercalls", "-1"],
    ["trace", "diff", "a", "b", "--context", "-1"],
    ["boot", "hello", "--max-insns", "lots"],
])
def test_negative_counts_are_usage_errors(capsys, argv):
    code, err = run_cli(capsys, *argv)
    assert code == 2 and "Traceback" not in err and "error: argument" in err


def test_output_files_that_cannot_be_written(tmp_path, capsys, snap_bytes):
    snap = tmp_path / "s.snap"
    snap.write_bytes(snap_bytes)
    code, err = run_cli(capsys, "snapshot", "run", str(snap), "--quiet", "--perfetto", str(tmp_path))
    assert code == 1 and err.splitlines()[-1] == f"miniguest: {tmp_path}: Is a directory"
    assert "Traceback" not in err
