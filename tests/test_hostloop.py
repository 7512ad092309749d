"""The host loop that services host I/O between guest run slices."""
from __future__ import annotations

import socket
import threading

from miniguest.hypervisor.hostloop import HostLoop


def test_reader_writer_and_cross_thread_calls():
    loop = HostLoop()
    a, b = socket.socketpair()
    got: list[bytes] = []
    loop.add_reader(a.fileno(), lambda: got.append(a.recv(100)))
    b.send(b"ping")
    assert loop.poll(1.0) and got == [b"ping"]
    writable: list[int] = []
    loop.add_writer(a.fileno(), lambda: writable.append(1))
    loop.poll(1.0)
    assert writable and got == [b"ping"]          # the reader stays registered beside the writer
    loop.remove_writer(a.fileno())
    writable.clear()
    assert not loop.poll(0) and not writable
    calls: list[str] = []
    t = threading.Thread(target=lambda: loop.call_soon(lambda: calls.append("from thread")))
    t.start()
    loop.poll(2.0)
    t.join()
    assert calls == ["from thread"]
    assert loop.has_readers
    loop.remove_reader(a.fileno())
    assert not loop.has_readers
    loop.close()
    a.close()
    b.close()


def test_kick_is_called_from_other_threads():
    loop = HostLoop()
    kicked = threading.Event()
    loop.set_kick(kicked.set)
    loop.call_soon(lambda: None)
    assert kicked.is_set()
    loop.close()
