"""Ctrl-C (SIGINT) stops a running guest wherever the interpreter happens to be when the signal arrives --
in the run loop, in a hook, or inside the virtual clock's callback that Unicorn calls from C -- and the
run ends as "stopped from the host" (exit 130), never as something else."""
from __future__ import annotations

import subprocess
import sys

import pytest

from guestlib import ROOT, SELFTEST

# A child that raises SIGINT from inside the clock's block-count callback (called from C by the block
# hook) on its 40th cache miss: exactly where a KeyboardInterrupt used to be swallowed by ctypes.
IN_CALLBACK = r'''
import signal, sys
from miniguest.hypervisor import vcpu as V
original = V.Vcpu.count_block
calls = [0]
def count_block(self, addr, size):
    calls[0] += 1
    if calls[0] == 40:
        signal.raise_signal(signal.SIGINT)       # the Python handler runs right here
    return original(self, addr, size)
V.Vcpu.count_block = count_block
if sys.argv[1] == "own-handler":                 # a program with its own handler that raises
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, handler)
from miniguest.cli.main import main
sys.exit(main(["boot", sys.argv[2], "-c", "spin", "--max-insns", "400000000", "--quiet"]))
'''


@pytest.mark.parametrize("handler", ["default", "own-handler"])
def test_sigint_inside_the_clock_callback_stops_the_guest(handler):
    r = subprocess.run([sys.executable, "-c", IN_CALLBACK, handler, SELFTEST], capture_output=True, cwd=ROOT,
                       timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 130, err                      # not 7: the budget was never reached
    assert "stopped from the host" in err and "instruction budget" not in err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_an_interrupted_block_is_still_counted_right():
    """The interrupted callback still returns the block's real instruction count (counts are cached: a wrong
    one would shift virtual time for the rest of the run), stops the CPU, and the run loop gets the
    interrupt once."""
    from miniguest import Domain
    dom = Domain.from_elf(SELFTEST, cmdline="spin")
    vcpu, clock = dom.vcpus[0], dom.clock
    entry = dom.symbols.address_of("guest_main")
    raised: list[int] = []

    def count(addr: int, size: int) -> int:
        if not raised:
            raised.append(1)
            raise KeyboardInterrupt                       # as a signal handler raising inside the callback
        return vcpu.count_block(addr, size)
    clock.set_deadline(None)
    assert clock._safe_count(count)(entry, 64) == vcpu.count_block(entry, 64) > 1
    assert clock.deadline_reached()                       # the CPU stops after this block
    with pytest.raises(KeyboardInterrupt):
        clock.take_interrupt()
    clock.take_interrupt()                                # raised once only
    dom.close()
