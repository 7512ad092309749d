"""Virtual time (default) against --realtime, seen by a guest that sleeps with SCHEDOP_poll + timeout."""
from __future__ import annotations

import re

from guestlib import selftest


def slept_ns(text: str) -> int:
    m = re.search(r"slept: rc=0 elapsed_ns=(\d+)", text)
    assert m, text
    return int(m.group(1))


def test_virtual_time_jumps_over_idle_periods_and_is_exact():
    dom = selftest("sleep 2000")
    elapsed = slept_ns(dom.console.text)
    assert 2_000_000_000 <= elapsed < 2_000_000_100     # the deadline, plus the few instructions after it
    # The two guest seconds were skipped while idle, not executed or waited for: almost all of the guest's
    # time is the clock's idle jump, and only a few thousand instructions ran.
    assert dom.clock.idle_ns >= 1_999_990_000 and dom.clock.icount < 1_000_000
    again = selftest("sleep 2000")
    assert slept_ns(again.console.text) == elapsed       # deterministic
    dom.close()
    again.close()


def test_realtime_follows_the_host_clock():
    dom = selftest("sleep 300", realtime=True)
    assert slept_ns(dom.console.text) >= 300_000_000    # the guest measured host time ...
    assert dom.clock.icount < 1_000_000                  # ... while blocked on the host, not spinning
    dom.close()


def test_rdtsc_counts_instructions_inside_a_block():
    """Two rdtsc three instructions apart differ by 3 even within one translated block (the clock counts
    whole blocks when they are entered; rdtsc adds its own position in the block)."""
    from guestlib import facts
    dom = selftest("rdtsc")
    f = facts(dom.console.text)
    assert f["rdtsc_delta"] == "3" and f["rdtsc_not_increasing"] == "0"
    dom.close()
