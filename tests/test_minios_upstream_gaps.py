"""Behaviour upstream Mini-OS relies on, found by building a real Mini-OS (Xen 4.5-era extras/mini-os, x86_64
PV, default test app) and booting it under miniguest; each gap is checked here with our own selftest guest
(scenario `minigaps WHAT`, firmware/selftest/minigaps.c) against what Xen and its dom0 tools do."""
from __future__ import annotations

from miniguest.backends.console import HV, RING, ConsoleLog

from guestlib import facts, selftest


def test_unfinished_line_from_both_sources_is_shown_once():
    # Mini-OS echoes console input with printk("%s", buf): one character, no newline, written to the
    # hypervisor console and to the PV ring. `xl console` shows the ring, Xen's serial line shows
    # console_io: either way the user sees each character once. miniguest merges the two sources and
    # used to show the unfinished part once per source when the guest idled ("hhT(s=..." for an "h").
    dom = selftest("minigaps partial")
    text = dom.console.text
    dom.close()
    assert dom.shutdown_reason == "poweroff", text
    assert "minigaps: echo> hello\n" in text, text
    assert text.count("echo>") == 1 and "hh" not in text, text


def test_console_log_merges_identical_unfinished_lines():
    log = ConsoleLog()
    log.write(HV, b"echo> ")
    log.write(RING, b"echo> ")
    log.flush()
    assert log.text == "echo> "
    log.write(RING, b"h")              # the ring is ahead: only the new byte is shown
    log.flush()
    log.write(HV, b"h")
    log.flush()
    assert log.text == "echo> h"
    log.write(HV, b"ello\n")
    log.write(RING, b"ello\r\n")
    log.write(HV, b"a")                # different unfinished text on each source: both are shown
    log.write(RING, b"b")
    log.flush()
    assert log.text == "echo> hello\nab"


def test_realtime_wallclock_is_the_hosts_time_of_day():
    # Mini-OS's gettimeofday() is shared_info's wallclock plus system time ("T(s=... us=...)" lines). On
    # Xen the wallclock is dom0's time of day; under --realtime miniguest kept its fixed virtual epoch
    # (2026-01-01), so a real-time Mini-OS printed a date unrelated to the host's.
    import time
    before = time.time()
    dom = selftest("minigaps wallclock", realtime=True)
    text = dom.console.text
    dom.close()
    after = time.time()
    f = facts(text)
    assert before - 2 <= int(f["wc_sec"]) <= after, text


def test_virtual_time_keeps_its_fixed_wallclock():
    # Default (reproducible) runs keep the configured epoch: the same console bytes on every run.
    dom = selftest("minigaps wallclock")
    text = dom.console.text
    wc = dom.config.wallclock[0]
    dom.close()
    assert facts(text)["wc_sec"] == str(wc) == "1767225600", text
