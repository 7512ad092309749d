"""Helpers shared by the xenstore tests (imported by plain name: tests/xenstore is on sys.path under pytest)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the package is imported from the work tree, not installed
    sys.path.insert(0, str(ROOT))

from miniguest.abi import xs_wire as W  # noqa: E402
from miniguest.backends.xenstore.daemon import XenstoreDaemon, populate_domain  # noqa: E402
from miniguest.backends.xenstore.guestring import GuestRing  # noqa: E402
from miniguest.hypervisor.hostloop import HostLoop  # noqa: E402

def make_guest(d: XenstoreDaemon, domid: int, start_index: int = 0, populate: bool = True) -> GuestRing:
    if populate:
        populate_domain(d, domid, name=f"guest{domid}", uuid=f"00000000-0000-0000-0000-{domid:012d}",
                        memory_kib=65536, store_port=1, store_mfn=0x1000 + domid, console_port=2,
                        console_mfn=0x2000 + domid)
    g = GuestRing(start_index=start_index)
    conn = d.introduce_domain(domid, g.page, g.notify)
    g.server_event = conn.on_event
    g.conn = conn  # type: ignore[attr-defined]
    return g


def err(g: GuestRing, msg_type: int, payload: bytes, tx_id: int = 0) -> str:
    """The errno name a request fails with ('' if it succeeded)."""
    t, body = g.request(msg_type, payload, tx_id)
    return body.rstrip(b"\0").decode() if t == W.XS_ERROR else ""


class LoopThread:
    """A HostLoop polled by a background thread; `run(fn)` executes fn on it and returns its result."""

    def __init__(self) -> None:
        self.loop = HostLoop()
        self._stop = False
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        while not self._stop:
            self.loop.poll(0.05)

    def run(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        done = threading.Event()
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # re-raised in the test thread
                box["error"] = exc
            done.set()
        self.loop.call_soon(call)
        if not done.wait(timeout):
            raise TimeoutError("loop did not run the call")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def stop(self) -> None:
        self._stop = True
        self.thread.join(5)
