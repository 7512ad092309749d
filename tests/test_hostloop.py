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
    """Another thread's call_soon kicks the CPU from that thread and wakes a loop sleeping in poll(None); the
    call itself runs on the loop's thread."""
    loop = HostLoop()
    kicked_from: list[int] = []
    ran_on: list[int] = []
    loop.set_kick(lambda: kicked_from.append(threading.get_ident()))
    sleeping = threading.Event()
    original_select = loop._selector.select

    def select(timeout=None):
        sleeping.set()                                 # the loop thread is about to sleep
        return original_select(timeout)
    loop._selector.select = select

    def other() -> None:
        assert sleeping.wait(10)
        loop.call_soon(lambda: ran_on.append(threading.get_ident()))
    t = threading.Thread(target=other)
    t.start()
    assert loop.poll(None)                             # sleeps until the other thread's call arrives
    t.join(10)
    assert not t.is_alive()
    assert kicked_from == [t.ident]
    assert ran_on == [threading.get_ident()]
    loop.close()
