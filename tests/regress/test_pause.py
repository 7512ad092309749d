"""Pausing a domain and resuming it changes nothing the guest can observe: the trace of a run paused after
any hypercall and resumed is the trace of the run that was never paused. (It found that Unicorn's
exception-in-progress state, left set when a hook stops the CPU, turned the guest's next fault into a #DF.)"""
from __future__ import annotations

import threading

import pytest
from guestlib import wait_until
from regresslib import MINIOS, SELFTEST, PauseAfter, lines, trace_run, traced


@pytest.mark.parametrize("n", [1, 3, 40, 400])
def test_pause_and_resume_is_invisible_minios(n):
    _, whole = trace_run(MINIOS)
    dom, tracer = traced(MINIOS)
    dom.hypercall_observers.append(PauseAfter(n))
    assert dom.run() == "paused"
    assert dom.run() == "shutdown"
    assert lines(tracer.records) == lines(whole)
    dom.close()


def test_pause_and_resume_is_invisible_user_mode():
    _, whole = trace_run(SELFTEST, cmdline="usermode")
    dom, tracer = traced(SELFTEST, cmdline="usermode")
    dom.hypercall_observers.append(PauseAfter(5))
    assert dom.run() == "paused"
    dom.run()
    assert lines(tracer.records) == lines(whole)


def test_pause_from_another_thread_and_resume():
    """A spinning guest (no hypercalls, no timers) is paused by another thread, then resumed and stopped by
    its instruction budget: pause() is safe from any thread, and run() after a pause continues."""
    dom, _ = traced(SELFTEST, cmdline="spin", max_instructions=150_000_000)
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(dom.run()))
    t.start()
    wait_until(lambda: dom.clock.icount > 1_000_000, what="the guest to spin")
    dom.pause()
    t.join(10)
    assert not t.is_alive() and result == ["paused"]
    paused_at = dom.clock.icount
    assert 0 < paused_at < 150_000_000
    assert dom.run() == "budget"
    assert dom.clock.icount >= 150_000_000
    dom.close()
