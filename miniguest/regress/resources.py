"""Resource control in the spirit of cgroups: a memory cap, an instruction budget, freeze and thaw.

- Memory: `set_memory_cap(domain, mib=...)` sets the domain's max_pages (Xen's `xl mem-max`). Reservation
  hypercalls that would take the domain past it allocate nothing more (memory_op returns the extents
  done so far, as Xen does); what the domain already has is never taken away.
- CPU: `DomainConfig.max_instructions` (`--max-insns`) ends the domain in state "budget".
- Freezer: `DomainThread` runs a domain on its own thread; `pause()` from any thread stops it at the next
  instruction-block boundary and waits until it is stopped, `resume()` lets it continue exactly where it
  was -- pausing is invisible to the guest and to its trace (tests/regress/test_pause.py).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from miniguest.hypervisor.host import Domain

PAGES_PER_MIB = 256


def set_memory_cap(domain: "Domain", mib: Optional[int] = None, pages: Optional[int] = None) -> int:
    """Cap the domain's memory (max_pages); returns the cap in pages. A cap below the current reservation
    is allowed (as in Xen): the domain keeps its pages but cannot get more."""
    if (mib is None) == (pages is None):
        raise ValueError("give the cap in mib or in pages")
    cap = pages if pages is not None else mib * PAGES_PER_MIB      # type: ignore[operator]
    if cap < 0:
        raise ValueError("a memory cap cannot be negative")
    domain.max_pages = cap
    domain.log(f"memory cap set to {cap} pages ({cap // PAGES_PER_MIB} MiB)")
    return cap


class DomainThread:
    """A domain running on a background thread, frozen and thawed on request from any other thread."""

    def __init__(self, domain: "Domain") -> None:
        self.domain = domain
        self.thread = threading.Thread(target=self._main, name=f"domain-{domain.name}", daemon=True)
        self._resume = threading.Event()
        self._stopped = threading.Condition()
        self.state: Optional[str] = None           # the state of the last run() that returned
        self.error: Optional[BaseException] = None

    def start(self) -> "DomainThread":
        self.thread.start()
        return self

    def _main(self) -> None:
        try:
            while True:
                state = self.domain.run()
                with self._stopped:
                    self.state = state
                    self._stopped.notify_all()
                if state != "paused":
                    return
                self._resume.wait()
                self._resume.clear()
        except BaseException as e:         # reported to the controlling thread, never lost
            with self._stopped:
                self.error = e
                self.state = "error"
                self._stopped.notify_all()

    def pause(self, timeout: Optional[float] = 10.0) -> bool:
        """Freeze the domain and wait until it is stopped; False if it had already ended (or timed out)."""
        with self._stopped:
            if self.domain.finished:
                return False
            self.state = None
        self.domain.pause()
        with self._stopped:
            self._stopped.wait_for(lambda: self.state is not None, timeout)
            return self.state == "paused"

    def resume(self) -> None:
        """Thaw a paused domain: it continues where it stopped."""
        with self._stopped:
            if self.state == "paused":
                self.state = None
                self._resume.set()

    def join(self, timeout: Optional[float] = None) -> Optional[str]:
        """Wait for the domain to end; returns its final state (None if still running after timeout)."""
        self.thread.join(timeout)
        return None if self.thread.is_alive() else self.state
