"""Resource control: the reservation hypercalls under Xen's rules and a memory cap, the instruction budget,
and freezing/thawing a running domain from another thread."""
from __future__ import annotations

import pytest
from guestlib import cli, facts, wait_until
from regresslib import SELFTEST, traced

from miniguest import Domain
from miniguest.regress.resources import DomainThread, set_memory_cap

BALLOON_OK = {"decrease_4": "4", "reservation_after_decrease": "4", "m2p_cleared": "1", "decrease_not_owned": "0",
              "decrease_mapped": "1", "mapped_page_kept": "1", "mapped_page_m2p_cleared": "1", "populate_2": "2",
              "populate_m2p": "1", "reservation_after_populate": "2", "increase_up_to_cap": "2",
              "increase_mfns_written": "1", "at_cap": "1", "increase_over_cap": "0", "order_above_domu_limit": "0",
              "populate_bad_list": "0", "decrease_again": "4", "reservation_end": "4"}


@pytest.mark.parametrize("scramble", [False, True])
def test_balloon_follows_xen_rules(scramble):
    dom = Domain.from_elf(SELFTEST, cmdline="balloon", scramble_mfns=scramble)
    nr = dom.tot_pages
    dom.run()
    f = facts(dom.console.text)
    assert {k: f.get(k) for k in BALLOON_OK} == BALLOON_OK, dom.console.text
    assert dom.shutdown_reason == "poweroff"
    assert dom.tot_pages == nr - 4
    # Frames given back have no owner and are out of the M2P; the mapped scratch page is still the domain's.
    free = [m for m, o in enumerate(dom.frames.owner) if o == -1]
    assert len(free) == 4 and all(dom.xen.get_m2p(m) == (1 << 64) - 1 for m in free)
    assert all(dom.p2m[p] == (1 << 64) - 1 for p in range(nr - 4, nr))
    dom.close()


def test_memory_cap_stops_populate_and_increase():
    dom = Domain.from_elf(SELFTEST, cmdline="balloon")
    set_memory_cap(dom, pages=dom.tot_pages - 3)
    dom.run()
    f = facts(dom.console.text)
    assert f["decrease_4"] == "4"
    assert f["populate_2"] == "1"                 # one page fits under the cap, the second does not
    assert f["increase_up_to_cap"] == "0"
    assert any("over-allocation" in m for m in dom.messages)
    dom.close()


def test_maxmem_option_and_trace_of_reservations(tmp_path):
    out = tmp_path / "b.jsonl"
    r = cli("trace", "record", SELFTEST, "-c", "balloon", "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    text = out.read_text()
    assert '"subop":"decrease_reservation"' in text and '"nr_extents":4' in text
    assert '"subop":"populate_physmap"' in text and '"mfns":[' in text
    r = cli("trace", "record", SELFTEST, "-c", "balloon", "--maxmem", "31", "-o", str(out), "--quiet")
    assert r.returncode == 3                      # 31 MiB < 32 MiB: nothing can come back, the checks fail
    populate = [line for line in out.read_text().splitlines() if '"subop":"populate_physmap"' in line]
    assert populate and all('"result":0' in line for line in populate)


@pytest.mark.slow
def test_freeze_and_thaw_from_another_thread():
    dom, _ = traced(SELFTEST, cmdline="spin", max_instructions=300_000_000)
    runner = DomainThread(dom).start()
    wait_until(lambda: dom.clock.icount > 1_000_000, what="the guest to spin")
    assert runner.pause()
    frozen = dom.clock.icount
    assert dom.state == "paused"
    runner.thread.join(0.05)                      # give a frozen domain the chance to move on: it must not
    assert dom.clock.icount == frozen and dom.state == "paused"
    runner.resume()
    wait_until(lambda: dom.clock.icount > frozen, what="the thawed guest to run")
    assert runner.pause()
    assert dom.clock.icount > frozen
    runner.resume()
    assert runner.join(30) == "budget"
    assert not runner.pause()                     # it has ended
    dom.close()
