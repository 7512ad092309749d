"""A GDB remote stub for a miniguest domain: step through start_kernel with real gdb.

    miniguest debug IMAGE [--gdb HOST:PORT]     then, elsewhere: gdb -ex 'target remote HOST:PORT' IMAGE
    miniguest gdb IMAGE                         starts the stub and gdb, already connected

The session lives on the domain's thread, like everything else that touches a domain:
- The listening socket and the gdb connection are readers on the domain's host loop. While the guest is
  halted the stub sleeps in that loop (other host I/O -- a xenstore socket, console input -- is still
  served); while the guest runs, Domain.run polls the loop between slices (slices are capped while readers
  exist), which is how gdb's Ctrl-C (a 0x03 byte) reaches the stub and pauses the guest within a slice.
- The guest is stopped before its first instruction (like `qemu -s -S`) until gdb resumes it.
- Detach (D) or a dropped connection removes every breakpoint and watchpoint and lets the guest run on to
  its end; another gdb may attach meanwhile (that interrupts the guest), as with QEMU.
- When the guest crashes, gdb sees SIGSEGV at the crash point first (registers, `bt` and memory stay
  inspectable; the crash report goes to gdb's console); resuming then reports the termination. A shutdown
  is reported as the exit of the process, with miniguest's exit code (poweroff 0, reboot 4, ...).

Protocol (packets as gdb names them): qSupported, QStartNoAckMode, qXfer:features:read (target.xml, see
tdesc.py), ?, g/G, p/P, m/M/X on guest-virtual addresses through the guest's page tables (E14 when not
mapped), Z0-Z4/z0-z4, vCont?/vCont c s, c/s/C/S, Ctrl-C, D, k/vKill, qAttached, qC, qfThreadInfo/
qsThreadInfo (thread N+1 is vCPU N), qThreadExtraInfo, qOffsets, qSymbol, T, H, qRcmd (monitor.py).
Anything else gets the empty reply ("not supported"); malformed packets get an error reply and the
session goes on: input from the network never raises out of the stub.
"""
from __future__ import annotations

import logging
import socket
from collections import deque
from typing import Callable, Optional, Union

from unicorn import x86_const as X

from miniguest.abi.arch_x86 import PAGE_SIZE, _PAGE_RW, _PAGE_USER, canonical
from miniguest.debug import tdesc
from miniguest.debug.monitor import Monitor
from miniguest.debug.rsp import PACKET_SIZE, Event, PacketReader, ProtocolError, frame, hex_to_bytes, parse_hex
from miniguest.hypervisor import host as D
from miniguest.hypervisor.debugger import (BP_HARDWARE, BP_SOFTWARE, STOP_CATCH, STOP_INTERRUPT, STOP_WATCHPOINT,
                                           WATCH_ACCESS, WATCH_READ, WATCH_WRITE, DebugError, DebugSupport,
                                           StopEvent)
from miniguest.toolstack.exit_status import SHUTDOWN_EXIT
from miniguest.toolstack.libxl import Guest        # W packets carry `miniguest boot`'s exit status

log = logging.getLogger("miniguest.gdbstub")

SIGINT, SIGKILL, SIGTRAP, SIGSEGV, SIGXCPU = 2, 9, 5, 11, 24
EFAULT, EINVAL, EPERM = 14, 22, 1
MAX_MEMORY_REPLY = (PACKET_SIZE - 32) // 2        # bytes of memory in one m reply (hex doubles it)
MAX_INBOX = 64                                    # packets queued while the guest runs
MAX_PENDING_CONSOLE = 1 << 16
SEND_TIMEOUT = 10.0                               # a client that stops reading is dropped after this
Z_KINDS = {0: BP_SOFTWARE, 1: BP_HARDWARE, 2: WATCH_WRITE, 3: WATCH_READ, 4: WATCH_ACCESS}


def parse_address(text: str, default_port: int = 1234) -> tuple[str, int]:
    """HOST:PORT, :PORT or PORT -> (host, port). ValueError with a readable message otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range")
    return host, number


class GdbStub:
    """One debug session server for one domain. `serve()` runs the domain under gdb's control until it ends
    (or gdb kills it) and returns the domain's final state."""

    def __init__(self, domain: Guest, host: str = "127.0.0.1", port: int = 1234, *,
                 reattach: bool = True, notify: Optional[Callable[[str], None]] = None) -> None:
        self.domain = domain
        self.loop = domain.host.loop
        self.debug = DebugSupport(domain)
        self._registers = tdesc.RegisterReader()
        self.reattach = reattach
        self.notify = notify or (lambda message: None)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener: Optional[socket.socket] = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(1)
            self.listener.setblocking(False)
        except OSError:
            self.listener.close()
            raise
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.client: Optional[socket.socket] = None
        self.reader = PacketReader()
        self.no_ack = False
        self.epoch = 0                      # which connection a pending stop reply belongs to
        self.halted = True                  # stopped under the debugger (vs detached and running)
        self.running = False                # inside DebugSupport.resume: Ctrl-C interrupts it
        self.in_domain_run = False          # the detached guest runs freely (Domain.run)
        self.stop_pending = False           # gdb waits for a stop reply: console output may go out now
        self.resume_action: Optional[tuple[str, Optional[int]]] = None
        self.inbox: deque[bytes] = deque()
        self.last_stop: Optional[StopEvent] = None
        self.pending_console: list[str] = []
        self.thread = 1
        self.killed = False
        self.final_reported = False
        self.crash_stopped = False
        self.in_rcmd = False
        self.monitor: Optional[Monitor] = None
        self.send_timeout = SEND_TIMEOUT
        self._detach_after_resume = False
        self._last_packet = b""

    # -- session ------------------------------------------------------------------------------------------
    def serve(self) -> str:
        if self.listener is not None:
            self.loop.add_reader(self.listener.fileno(), self._on_accept)
        self.monitor = Monitor(self.domain, self.debug, self._console)
        try:
            self.last_stop = self.debug.run_to_entry()
            while not self.killed:
                if self.domain.finished and (self.client is None or self.final_reported):
                    break
                if self.halted or self.domain.finished:
                    self.loop.poll(None)
                    if self.resume_action is not None:
                        self._resume()
                    self._drain_inbox()
                else:
                    self.in_domain_run = True
                    try:
                        self.domain.run()    # detached: until the end, or a new gdb interrupts it
                    finally:
                        self.in_domain_run = False
                    if not self.domain.finished:
                        self.halted = True
        finally:
            self.close()
        return self.domain.state

    def close(self) -> None:
        """Stop listening, drop the client, remove every debugger hook. Idempotent."""
        if self.client is not None:
            self._drop_client()
        if self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
        if self.monitor is not None:
            self.monitor.close()
        self._clear_debug_state()

    def kill(self) -> None:
        """Destroy the domain and end the session (gdb's `kill`; also safe via loop.call_soon from tests)."""
        self.killed = True
        if not self.domain.finished:
            if self.running or self.in_domain_run:
                self.domain.state = D.STOPPED       # Domain.run leaves its loop and runs on_final
                self.domain.kick()
            else:
                self.domain.state = D.STOPPED
                for cb in self.domain.on_final:
                    cb(self.domain)

    # -- connections --------------------------------------------------------------------------------------
    def _on_accept(self) -> None:
        if self.listener is None:
            return
        try:
            conn, peer = self.listener.accept()
        except OSError:
            return
        if self.client is not None or self.killed:
            conn.close()                        # one gdb at a time
            return
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        conn.settimeout(self.send_timeout)
        self.client = conn
        self.reader = PacketReader()
        self.no_ack = False
        self.thread = 1
        self.epoch += 1
        self.loop.add_reader(conn.fileno(), self._on_readable)
        self.notify(f"gdb connected from {peer[0]}:{peer[1]}")
        if not self.halted or self.running:
            self.debug.request_interrupt()      # attaching stops a running guest
            self.last_stop = StopEvent("attach", 0)

    def _on_readable(self) -> None:
        client = self.client
        if client is None:
            return
        try:
            data = client.recv(65536)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return
        except OSError:
            data = b""
        if not data:
            self._client_lost()
            return
        for ev in self.reader.feed(data):
            if self.client is not client:
                break
            self._event(ev)

    def _client_lost(self) -> None:
        self.notify("gdb disconnected; the guest runs on")
        self._drop_client()
        if self.running:
            # Possibly inside a CPU hook (a trace record's O packet failed to send): hooks and tracers must
            # not be removed from under Unicorn or the hypercall dispatcher. Stop at the next boundary and
            # detach there; the guest then runs on.
            self._detach_after_resume = True
            self.debug.request_interrupt()
        else:
            self._detach()

    def _drop_client(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            self.loop.remove_reader(client.fileno())
        except (OSError, ValueError):
            pass
        try:
            client.close()
        except OSError:
            pass
        self.inbox.clear()
        self.pending_console.clear()
        self.resume_action = None
        if not self.reattach and self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None

    def _detach(self) -> None:
        self._clear_debug_state()
        if not self.domain.finished:
            self.halted = False

    def _clear_debug_state(self) -> None:
        for addr, bp in list(self.debug.breakpoints.items()):
            for kind in list(bp.owners):
                self.debug.remove_breakpoint(addr, kind)
        for wp in list(self.debug.watchpoints):
            self.debug.remove_watchpoint(wp.kind, wp.va, wp.length)
        if self.monitor is not None:
            self.monitor.trace_off()
            self.monitor.catches.clear()

    # -- wire ---------------------------------------------------------------------------------------------
    def _send_raw(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        try:
            client.sendall(data)
        except OSError:             # includes the send timeout: a client that stopped reading
            self._client_lost()

    def _send(self, payload: Union[str, bytes]) -> None:
        self._last_packet = frame(payload)
        self._send_raw(self._last_packet)

    def _event(self, ev: Event) -> None:
        if ev.kind == "interrupt":
            if self.running:
                self.debug.request_interrupt()
        elif ev.kind == "nak":
            if not self.no_ack and self._last_packet:
                self._send_raw(self._last_packet)
        elif ev.kind == "bad":
            log.debug("gdb stub: dropped a packet: %s", ev.why)
            if not self.no_ack:
                self._send_raw(b"-")
        elif ev.kind == "packet":
            if not self.no_ack:
                self._send_raw(b"+")
            if self.running or self.resume_action is not None:
                if len(self.inbox) < MAX_INBOX:
                    self.inbox.append(ev.payload)
            else:
                self._handle(ev.payload)

    def _drain_inbox(self) -> None:
        while self.inbox and self.resume_action is None and self.client is not None and not self.running:
            self._handle(self.inbox.popleft())

    def _console(self, text: str) -> None:
        """Text for gdb's console (O packets): now if gdb is waiting for a stop or a monitor reply, else
        queued until it is."""
        if self.client is None:
            return
        if self.stop_pending or self.in_rcmd:
            data = text.encode("utf-8", "replace")
            for i in range(0, len(data), MAX_MEMORY_REPLY):
                self._send(b"O" + data[i:i + MAX_MEMORY_REPLY].hex().encode())
        elif sum(map(len, self.pending_console)) < MAX_PENDING_CONSOLE:
            self.pending_console.append(text)

    def _flush_console(self) -> None:
        pending, self.pending_console = self.pending_console, []
        for text in pending:
            self._console(text)

    # -- packets ------------------------------------------------------------------------------------------
    def _handle(self, pkt: bytes) -> None:
        try:
            reply = self._dispatch(pkt.decode("latin-1"), pkt)
        except (ProtocolError, ValueError, IndexError) as e:
            log.debug("gdb stub: malformed packet %r: %s", pkt[:64], e)
            reply = f"E{EINVAL:02x}"
        except DebugError as e:
            log.debug("gdb stub: %s", e)
            reply = f"E{EFAULT:02x}"
        except Exception as e:           # a bug in the stub: keep serving; one line for the user
            log.debug("gdb stub: internal error on %r", pkt[:64], exc_info=True)
            self.notify(f"gdb stub: internal error on a {pkt[:1].decode('latin-1')!r} packet: "
                        f"{type(e).__name__}: {e}")
            reply = f"E{EPERM:02x}"
        if reply is not None:
            self._send(reply)

    def _dispatch(self, p: str, raw: bytes) -> Optional[str]:
        """Answer one packet: the reply, "" for an unsupported packet, None when the reply comes later (a
        resume) or not at all (detach, kill)."""
        if not p:
            return ""
        handler = self.PACKETS.get(p[0])
        return handler(self, p, raw) if handler is not None else ""

    # -- packets, by their first character (PACKETS) -----------------------------------------------------
    def _pkt_stop_reason(self, p: str, raw: bytes) -> Optional[str]:
        return self._stop_reply(self.last_stop)

    def _pkt_read_registers(self, p: str, raw: bytes) -> Optional[str]:
        return self._registers.read_all(self._vcpu()).hex()

    def _pkt_write_registers(self, p: str, raw: bytes) -> Optional[str]:
        tdesc.write_all(self._vcpu(), hex_to_bytes(p[1:]))
        return "OK"

    def _pkt_read_register(self, p: str, raw: bytes) -> Optional[str]:
        n = parse_hex(p[1:])
        if n >= len(tdesc.REGISTERS):
            return f"E{EINVAL:02x}"
        return tdesc.read_register(self._vcpu(), n).hex()

    def _pkt_write_register(self, p: str, raw: bytes) -> Optional[str]:
        num, _, value = p[1:].partition("=")
        n = parse_hex(num)
        data = hex_to_bytes(value)
        if n >= len(tdesc.REGISTERS) or len(data) != tdesc.REGISTERS[n].size:
            return f"E{EINVAL:02x}"
        try:
            tdesc.write_register(self._vcpu(), n, data)
        except tdesc.RegisterError:
            return f"E{EPERM:02x}"
        return "OK"

    def _pkt_read_memory(self, p: str, raw: bytes) -> Optional[str]:
        addr, length = self._addr_len(p[1:])
        return self._read_memory(addr, length)

    def _pkt_write_memory_hex(self, p: str, raw: bytes) -> Optional[str]:
        head, _, data = p[1:].partition(":")
        addr, length = self._addr_len(head)
        payload = hex_to_bytes(data)
        if len(payload) != length:
            return f"E{EINVAL:02x}"
        return self._write_memory(addr, payload)

    def _pkt_write_memory_binary(self, p: str, raw: bytes) -> Optional[str]:
        colon = raw.find(b":")
        if colon < 0:
            return f"E{EINVAL:02x}"
        addr, length = self._addr_len(p[1:colon])
        payload = raw[colon + 1:]
        if len(payload) != length:
            return f"E{EINVAL:02x}"
        return self._write_memory(addr, payload) if length else "OK"

    def _pkt_breakpoint(self, p: str, raw: bytes) -> Optional[str]:
        return self._breakpoint(p[0] == "Z", p[1:])

    def _pkt_resume(self, p: str, raw: bytes) -> Optional[str]:
        self.resume_action = (p[0], parse_hex(p[1:]) if len(p) > 1 else None)
        return None

    def _pkt_resume_signal(self, p: str, raw: bytes) -> Optional[str]:
        sig, _, addr = p[1:].partition(";")
        parse_hex(sig)                  # signals cannot be delivered to a PV kernel: ignored
        self.resume_action = (p[0].lower(), parse_hex(addr) if addr else None)
        return None

    def _pkt_set_thread(self, p: str, raw: bytes) -> Optional[str]:
        return "OK" if self._thread_id(p[2:], select=p[1:2] == "g") else f"E{EINVAL:02x}"

    def _pkt_thread_alive(self, p: str, raw: bytes) -> Optional[str]:
        return "OK" if self._thread_id(p[1:]) else f"E{EINVAL:02x}"

    def _pkt_detach(self, p: str, raw: bytes) -> Optional[str]:
        self._send("OK")
        self.notify("gdb detached; the guest runs on")
        self._drop_client()
        self._detach()
        return None

    def _pkt_kill(self, p: str, raw: bytes) -> Optional[str]:
        self.kill()
        self._drop_client()
        return None

    def _pkt_v(self, p: str, raw: bytes) -> Optional[str]:
        return self._v_packet(p)

    def _pkt_query(self, p: str, raw: bytes) -> Optional[str]:
        return self._query(p)

    PACKETS: dict[str, Callable[["GdbStub", str, bytes], Optional[str]]] = {
        "?": _pkt_stop_reason, "g": _pkt_read_registers, "G": _pkt_write_registers, "p": _pkt_read_register,
        "P": _pkt_write_register, "m": _pkt_read_memory, "M": _pkt_write_memory_hex,
        "X": _pkt_write_memory_binary, "Z": _pkt_breakpoint, "z": _pkt_breakpoint, "c": _pkt_resume,
        "s": _pkt_resume, "C": _pkt_resume_signal, "S": _pkt_resume_signal, "H": _pkt_set_thread,
        "T": _pkt_thread_alive, "D": _pkt_detach, "k": _pkt_kill, "v": _pkt_v, "q": _pkt_query, "Q": _pkt_query,
    }

    def _v_packet(self, p: str) -> Optional[str]:
        if p == "vCont?":
            return "vCont;c;C;s;S"
        if p.startswith("vCont;"):
            action = None
            for item in p[6:].split(";"):
                act, _, tid = item.partition(":")
                if not act:
                    raise ProtocolError("empty vCont action")
                if tid and not self._thread_id(tid, select=False):
                    continue
                action = act
                break
            if action is None:
                return f"E{EINVAL:02x}"
            if action[0] in "cC":
                self.resume_action = ("c", None)
            elif action[0] in "sS":
                self.resume_action = ("s", None)
            else:
                return f"E{EINVAL:02x}"      # t and r: non-stop and range stepping are not offered
            if action[0] in "CS":
                parse_hex(action[1:])
            return None
        if p.startswith("vKill"):
            self.kill()
            self._send("OK")
            self._drop_client()
            return None
        return ""

    def _query(self, p: str) -> Optional[str]:
        name, _, args = p.partition(":")
        if name == "qSupported":
            return (f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;QStartNoAckMode+;hwbreak+;"
                    "vContSupported+")
        if p == "QStartNoAckMode":
            self._send("OK")                # still acknowledged: the switch happens after this reply
            self.no_ack = True
            return None
        if p == "qAttached" or p.startswith("qAttached:"):
            return "1"                      # gdb detaches (the guest runs on) rather than kills on quit
        if p == "qC":
            return f"QC{self.thread:x}"
        if p == "qfThreadInfo":
            return "m" + ",".join(f"{v.id + 1:x}" for v in self.domain.vcpus)
        if p == "qsThreadInfo":
            return "l"
        if p.startswith("qThreadExtraInfo,"):
            n = parse_hex(p.split(",", 1)[1])
            if not 1 <= n <= len(self.domain.vcpus):
                return f"E{EINVAL:02x}"
            v = self.domain.vcpus[n - 1]
            text = f"vcpu{v.id} {'blocked' if v.blocked else 'runnable'}, guest " \
                   f"{'kernel' if v.kernel_mode else 'user'} mode"
            return text.encode().hex()
        if p == "qOffsets":
            return "Text=0;Data=0;Bss=0"     # a PV kernel runs at its link addresses
        if p.startswith("qSymbol"):
            return "OK"
        if name == "qXfer" and args.startswith("features:read:"):
            return self._xfer_features(args[len("features:read:"):])
        if p.startswith("qRcmd,"):
            return self._rcmd(hex_to_bytes(p[6:]).decode("utf-8", "replace"))
        return ""

    # -- helpers ------------------------------------------------------------------------------------------
    def _vcpu(self):
        vcpus = self.domain.vcpus
        return vcpus[self.thread - 1] if 1 <= self.thread <= len(vcpus) else vcpus[0]

    def _thread_id(self, text: str, select: bool = False) -> bool:
        """Validate a thread-id (-1 all, 0 any, N = vCPU N-1; p<pid>.<tid> accepted); `select` makes it
        the thread g/p/m use."""
        if text.startswith("p"):
            text = text.partition(".")[2] or "-1"
        if text in ("-1", "0"):
            return True
        n = parse_hex(text)
        if not 1 <= n <= len(self.domain.vcpus):
            return False
        if select:
            self.thread = n
        return True

    @staticmethod
    def _addr_len(text: str) -> tuple[int, int]:
        a, sep, n = text.partition(",")
        if not sep:
            raise ProtocolError("expected ADDR,LENGTH")
        return parse_hex(a), parse_hex(n)

    def _read_memory(self, addr: int, length: int) -> str:
        """The guest kernel's view: a page must be present and user-accessible (the guest kernel runs at
        CPL3; Xen's own pages are supervisor-only). A short read ends at the first unreadable byte."""
        length = min(length, MAX_MEMORY_REPLY)
        aspace = self._vcpu().aspace
        mv = self.domain.mem.mv
        out = bytearray()
        while len(out) < length:
            va = addr + len(out)
            if va >= 1 << 64 or not canonical(va):
                break
            t = aspace.walk(va)
            if t is None or not t[1] & _PAGE_USER:
                break
            n = min(length - len(out), PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            out += mv[t[0]:t[0] + n]
        if not out and length:
            return f"E{EFAULT:02x}"
        return out.hex()

    def _write_memory(self, addr: int, data: bytes) -> str:
        """All or nothing, to pages the guest kernel may write; translated code and the clock's block
        counts over the range are invalidated (the guest may run what gdb wrote)."""
        vcpu = self._vcpu()
        pieces = []
        pos = 0
        while pos < len(data):
            va = addr + pos
            if va >= 1 << 64 or not canonical(va):
                return f"E{EFAULT:02x}"
            t = vcpu.aspace.walk(va)
            if t is None or not t[1] & _PAGE_USER or not t[1] & _PAGE_RW:
                return f"E{EFAULT:02x}"
            n = min(len(data) - pos, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            pieces.append((va, t[0], data[pos:pos + n]))
            pos += n
        mv = self.domain.mem.mv
        for va, ma, chunk in pieces:
            mv[ma:ma + len(chunk)] = chunk
            for v in self.domain.vcpus:
                v.uc.ctl_remove_cache(va, va + len(chunk))
        if pieces:
            self.domain.clock.flush_cache()
        return "OK"

    def _breakpoint(self, insert: bool, args: str) -> str:
        fields = args.split(";", 1)[0].split(",")
        if len(fields) != 3:
            raise ProtocolError("expected TYPE,ADDR,KIND")
        ztype = parse_hex(fields[0])
        addr, kind = parse_hex(fields[1]), parse_hex(fields[2])
        what = Z_KINDS.get(ztype)
        if what is None:
            return ""                       # unknown types: not supported
        if what in (BP_SOFTWARE, BP_HARDWARE):
            if insert:
                self.debug.insert_breakpoint(addr, what)
            else:
                self.debug.remove_breakpoint(addr, what)
            return "OK"
        if insert:
            self.debug.insert_watchpoint(what, addr, kind, self._vcpu())
        else:
            self.debug.remove_watchpoint(what, addr, kind)
        return "OK"

    def _xfer_features(self, args: str) -> str:
        annex, _, span = args.partition(":")
        data = tdesc.FEATURES.get(annex)
        if data is None:
            return f"E{EINVAL:02x}"
        off, length = self._addr_len(span)
        chunk = data[off:off + min(length, PACKET_SIZE - 16)]
        prefix = "l" if off + len(chunk) >= len(data) else "m"
        return prefix + chunk.decode("latin-1")

    def _rcmd(self, line: str) -> str:
        assert self.monitor is not None
        self.in_rcmd = True
        try:
            self._flush_console()
            self._console(self.monitor.run(line))
        finally:
            self.in_rcmd = False
        return "OK"

    # -- running ------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        action, addr = self.resume_action or ("c", None)
        self.resume_action = None
        epoch = self.epoch
        if self.domain.finished:
            self._report_final()
            return
        vcpu = self._vcpu()
        if addr is not None:
            vcpu.uc.reg_write(X.UC_X86_REG_RIP, addr)
        self.running = self.stop_pending = True
        self._flush_console()
        try:
            stop = self.debug.resume(step=action == "s", vcpu=vcpu)
        finally:
            self.running = False
        if self._detach_after_resume:
            self._detach_after_resume = False
            self._detach()
        if stop is not None:
            self.last_stop = stop
        if self.epoch != epoch or self.client is None:
            # The gdb that resumed is gone. If another one attached (and interrupted the guest), the guest
            # is halted for it and it asks with `?`; otherwise the guest ran on to its end.
            self.stop_pending = False
            if stop is not None and self.client is not None:
                self.halted = True
            return
        if stop is None:
            self._report_final()
            return
        if stop.reason == STOP_CATCH:
            self._console(self._describe_catch(stop))
        self.stop_pending = False
        self._send(self._stop_reply(stop))

    def _describe_catch(self, stop: StopEvent) -> str:
        vcpu = self.domain.vcpus[stop.vcpu]
        regs = vcpu.regs()
        args = (regs["rdi"], regs["rsi"], regs["rdx"], regs["r10"], regs["r8"])
        nr = (stop.addr - self.domain.image.notes.hypercall_page) // 32 if self.domain.image else -1
        hc = self.domain.hypercalls.get(nr)
        shown = [f"{a:#x}" for a in args[:hc.nargs if hc and hc.handler else 5]]
        if hc is not None and hc.subop_arg is not None:
            shown[hc.subop_arg] = str(hc.subop_name(args))
        caller = vcpu.aspace.read_u64(regs["rsp"]) if vcpu.aspace.walk(regs["rsp"]) else None
        where = self.monitor.formatter.where(caller) if self.monitor and caller is not None else "?"
        return f"\nCatchpoint: {stop.detail}({', '.join(shown)}) called from {where}\n"

    def _stop_reply(self, stop: Optional[StopEvent]) -> str:
        if self.domain.finished and not self.crash_stopped:
            return self._final_packet()
        if self.crash_stopped:
            sig = SIGSEGV
        elif stop is None or stop.reason == STOP_INTERRUPT:
            sig = SIGINT if stop is not None else SIGTRAP
        else:
            sig = SIGTRAP
        vcpu_id = stop.vcpu if stop is not None else 0
        parts = [f"T{sig:02x}"]
        if stop is not None and stop.reason == STOP_WATCHPOINT and stop.addr is not None:
            parts.append(f"{stop.kind}:{stop.addr:x};")
        elif stop is not None and stop.kind == BP_HARDWARE:
            parts.append("hwbreak:;")
        parts.append(f"thread:{vcpu_id + 1:x};")
        regs = self.domain.vcpus[vcpu_id].regs()
        for n in (tdesc.RBP, tdesc.RSP, tdesc.RIP):   # expedited: gdb needs no g for a plain step
            parts.append(f"{n:02x}:{regs[tdesc.REGISTERS[n].name].to_bytes(8, 'little').hex()};")
        return "".join(parts)

    def _final_packet(self) -> str:
        d = self.domain
        if d.state == D.SHUTDOWN:
            return f"W{SHUTDOWN_EXIT.get(d.shutdown_reason or '', 3):02x}"
        if d.state == D.CRASHED:
            return f"X{SIGSEGV:02x}"
        if d.state == D.BUDGET:
            return f"X{SIGXCPU:02x}"
        return f"X{SIGKILL:02x}"

    def _report_final(self) -> None:
        """The domain ended: a crash is a stop first (SIGSEGV), then the end is reported as an exit."""
        d = self.domain
        self.stop_pending = True
        if d.state == D.CRASHED and not self.crash_stopped:
            # Stop at the crash first: gdb can still look at registers, the stack and memory.
            self.crash_stopped = True
            if d.crash_report:
                self._console(d.crash_report + "\n")
            self.last_stop = StopEvent("crash", 0)
            self.stop_pending = False
            self._send(self._stop_reply(self.last_stop))
            return
        if d.state == D.SHUTDOWN:
            self._console(f"domain {d.name} shut down: {d.shutdown_reason}\n")
        elif d.state == D.BUDGET:
            self._console(f"domain {d.name}: instruction budget exhausted\n")
        self.stop_pending = False
        self._send(self._final_packet())
        self.final_reported = True
