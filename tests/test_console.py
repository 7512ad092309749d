"""The console daemon's ring handling and the merged console log."""
from __future__ import annotations

import struct

from miniguest.abi.console import CONS_IN_CONS, CONS_IN_PROD, CONS_OUT, CONS_OUT_CONS, CONS_OUT_PROD
from miniguest.backends.console import HV, RING, ConsoleBackend, ConsoleLog

from guestlib import selftest


def make_backend():
    page = memoryview(bytearray(4096))
    out: list[bytes] = []
    notes: list[int] = []
    reports: list[str] = []
    be = ConsoleBackend(page, lambda: notes.append(1), out.append, reports.append)
    return page, be, out, notes, reports


def guest_write(page, data: bytes) -> None:
    prod = struct.unpack_from("<I", page, CONS_OUT_PROD)[0]
    for i, b in enumerate(data):
        page[CONS_OUT + (prod + i) % 2048] = b
    struct.pack_into("<I", page, CONS_OUT_PROD, (prod + len(data)) & 0xFFFFFFFF)


def test_free_running_indexes_wrap_around_2_32():
    page, be, out, notes, _ = make_backend()
    start = 0xFFFFFFFF - 5
    struct.pack_into("<II", page, CONS_OUT_CONS, start, start)
    guest_write(page, b"hello across the wrap\n")
    be.on_event()
    assert b"".join(out) == b"hello across the wrap\n"
    assert struct.unpack_from("<I", page, CONS_OUT_CONS)[0] == (start + 22) & 0xFFFFFFFF
    assert notes == [1]


def test_input_is_fed_into_the_in_ring():
    page, be, out, notes, _ = make_backend()
    be.feed(b"x" * 1500)          # more than the 1024-byte ring: the rest waits
    assert struct.unpack_from("<I", page, CONS_IN_PROD)[0] == 1024
    struct.pack_into("<I", page, CONS_IN_CONS, 1024)   # the guest consumed it all
    be.on_event()
    assert struct.unpack_from("<I", page, CONS_IN_PROD)[0] == 1500


def test_corrupt_indexes_stop_service_once():
    page, be, out, notes, reports = make_backend()
    struct.pack_into("<II", page, CONS_OUT_CONS, 0, 5000)
    be.on_event()
    be.on_event()
    assert out == [] and len(reports) == 1 and "out of range" in reports[0]
    guest_write(page, b"ignored")
    be.on_event()
    assert out == []


def test_guest_corrupting_its_ring_keeps_running():
    dom = selftest("consolecorrupt")
    assert dom.shutdown_reason == "poweroff"
    assert "still running after corrupting the console ring" in dom.console.text
    assert any("guest moved the out indexes out of range" in m for m in dom.messages)
    dom.close()


def test_lines_from_both_sources_shown_once_in_first_arrival_order():
    shown: list[bytes] = []
    log = ConsoleLog([shown.append])
    log.write(HV, b"early line\n")              # console_io only (before the ring is up)
    log.write(HV, b"one\ntwo\n")
    log.write(RING, b"early line\r\none\r\n")   # delayed ring copy of the same lines
    log.write(RING, b"two\r\nring only\r\n")
    log.write(HV, b"hv only\n")
    assert log.text == "early line\none\ntwo\nring only\nhv only\n"
    assert b"".join(shown) == log.merged


def test_a_line_printed_twice_by_one_source_is_shown_twice():
    log = ConsoleLog()
    log.write(HV, b"tick\ntick\n")
    log.write(RING, b"tick\r\n")
    assert log.text == "tick\ntick\n"


def test_partial_line_shown_when_idle_then_completed_once():
    log = ConsoleLog()
    log.write(HV, b"Initialising console ... ")
    log.flush()                                    # the guest went idle: the prompt is shown
    assert log.text == "Initialising console ... "
    log.write(HV, b"done.\n")
    log.write(RING, b"Initialising console ... done.\r\n")
    log.write(RING, b"next\r\n")
    log.flush()
    assert log.text == "Initialising console ... done.\nnext\n"


def test_partial_line_the_other_source_already_completed_is_not_repeated():
    log = ConsoleLog()
    log.write(HV, b"Initialising console ... ")           # console_io only, never finished there
    log.write(RING, b"Initialising console ... done.\r\n")
    log.flush()
    log.write(RING, b"T(s=1)\r\n")
    log.flush()
    assert log.text == "Initialising console ... done.\nT(s=1)\n"


def test_prompt_shown_then_completed_by_the_other_source():
    log = ConsoleLog()
    log.write(HV, b"login: ")
    log.flush()
    log.write(RING, b"login: root\r\n")
    log.flush()
    assert log.text == "login: root\n"
