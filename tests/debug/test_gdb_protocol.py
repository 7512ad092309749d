"""The gdb stub through a small Python RSP client: the protocol subset gdb uses, and hostile input.

Every test talks to a stub serving a real domain on a background thread (debuglib.StubThread)."""
from __future__ import annotations

import socket
import struct
import time

from debuglib import HELLO, SELFTEST

from miniguest.debug import tdesc
from miniguest.debug.rsp import frame

ENTRY = 0xFFFFFFFF80000000          # hello's entry point (_text)


def sym(stub, name: str) -> int:
    addr = stub.domain.symbols.address_of(name)
    assert addr is not None, name
    return addr


def reg(reply: bytes, name: str) -> int:
    """A register from a g reply."""
    raw = bytes.fromhex(reply.decode())
    off = sum(r.size for r in tdesc.REGISTERS[:tdesc.BY_NAME[name]])
    return int.from_bytes(raw[off:off + tdesc.REGISTERS[tdesc.BY_NAME[name]].size], "little")


def stop_fields(reply: bytes) -> dict[str, str]:
    assert reply[:1] == b"T", reply
    fields = {"signal": reply[1:3].decode()}
    for item in reply[3:].decode().split(";"):
        if item:
            k, _, v = item.partition(":")
            fields[k] = v
    return fields


def test_handshake_stops_before_the_first_guest_instruction(stub_for):
    s = stub_for(HELLO)
    c = s.client(no_ack=False)
    features = c.request("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386").decode()
    assert "PacketSize=4000" in features and "qXfer:features:read+" in features
    assert "QStartNoAckMode+" in features and "vContSupported+" in features
    assert c.request("vMustReplyEmpty") == b""
    assert c.start_no_ack() == b"OK"
    stop = stop_fields(c.request("?"))
    assert stop["signal"] == "05" and stop["thread"] == "1"
    assert int.from_bytes(bytes.fromhex(stop["10"]), "little") == ENTRY
    assert c.request("qfThreadInfo") == b"m1" and c.request("qsThreadInfo") == b"l"
    assert c.request("qC") == b"QC1" and c.request("qAttached") == b"1"
    assert c.request("Hg0") == b"OK" and c.request("Hc-1") == b"OK" and c.request("T1") == b"OK"
    assert c.request("vCont?") == b"vCont;c;C;s;S"
    assert c.request("qOffsets") == b"Text=0;Data=0;Bss=0"
    assert bytes.fromhex(c.request("qThreadExtraInfo,1").decode()).startswith(b"vcpu0 runnable")
    xml = b""
    while True:
        part = c.request(f"qXfer:features:read:target.xml:{len(xml):x},200")
        xml += part[1:]
        if part[:1] == b"l":
            break
    assert xml == tdesc.TARGET_XML.encode()
    # Nothing ran: the domain is paused at the entry with Xen's start-of-day registers.
    g = c.request("g")
    assert len(g) == 2 * tdesc.G_PACKET_SIZE
    assert reg(g, "rip") == ENTRY and reg(g, "cs") == 0xE033 and reg(g, "ss") == 0xE02B
    assert reg(g, "rsi") == s.domain.start_info_va and reg(g, "eflags") & 0x200
    assert s.domain.clock.icount <= 2


def test_registers_read_write(stub_for):
    s = stub_for(HELLO)
    c = s.client()
    assert c.request(f"p{tdesc.BY_NAME['cs']:x}") == (0xE033).to_bytes(4, "little").hex().encode()
    rax = tdesc.BY_NAME["rax"]
    assert c.request(f"P{rax:x}=" + (0x1122334455667788).to_bytes(8, "little").hex()) == b"OK"
    assert c.request(f"p{rax:x}") == (0x1122334455667788).to_bytes(8, "little").hex().encode()
    xmm3 = tdesc.BY_NAME["xmm3"]
    assert c.request(f"P{xmm3:x}=" + bytes(range(16)).hex()) == b"OK"
    assert c.request(f"p{xmm3:x}") == bytes(range(16)).hex().encode()
    # Xen's selectors are read-only; IOPL/IF/TF in eflags cannot be changed; fs_base must be canonical.
    assert c.request(f"P{tdesc.BY_NAME['cs']:x}=" + (0x10).to_bytes(4, "little").hex()).startswith(b"E")
    assert c.request(f"P{tdesc.EFLAGS:x}=" + (0x3301).to_bytes(4, "little").hex()) == b"OK"
    assert int.from_bytes(bytes.fromhex(c.request(f"p{tdesc.EFLAGS:x}").decode()), "little") == 0x203
    assert c.request(f"P{tdesc.BY_NAME['fs_base']:x}=" + (1 << 60).to_bytes(8, "little").hex()).startswith(b"E")
    # G writes back what g read (gdb does that); the selectors in it are left alone.
    g = c.request("g")
    assert c.request(b"G" + g) == b"OK"
    assert c.request("g") == g
    assert c.request(f"p{len(tdesc.REGISTERS):x}") == b"E16"


def test_memory_through_the_guest_page_tables(stub_for):
    s = stub_for(HELLO)
    c = s.client()
    elf = open(HELLO, "rb").read()
    code = c.read_memory(ENTRY, 16)
    assert code is not None and code in elf
    assert c.read_memory(0, 8) is None                          # not mapped
    assert c.request("m0,8") == b"E0e"
    assert c.read_memory(0xFFFF820000000000, 8) is None         # Xen's per-domain area: supervisor-only
    assert c.read_memory(0xFFFF800000000000, 8) is not None     # the M2P: readable by the guest
    assert c.read_memory(0x0000800000000000, 8) is None         # not canonical
    assert c.request("mffffffffffffffff,10") == b"E0e"
    # A read across the end of the boot mapping returns what is mapped.
    end = s.domain.layout.virt_pgtab_end
    assert len(c.read_memory(end - 4, 16) or b"") == 4
    # A huge length is capped, not honoured.
    assert 0 < len(c.request(f"m{ENTRY:x},ffffffff")) <= 0x4000
    passed = sym(s, "passed")
    assert c.request(f"M{passed:x},4:2a000000") == b"OK"
    assert c.read_memory(passed, 4) == b"\x2a\0\0\0"
    assert c.request(f"X{passed:x},4:".encode() + b"#\x01\0\0") == b"OK"     # '#' travels escaped
    assert c.read_memory(passed, 4) == b"#\x01\0\0"
    assert c.request(f"X{passed:x},0:") == b"OK"
    assert c.request("M0,4:00000000") == b"E0e"
    # Page-table pages are read-only for the guest kernel, hence for its debugger too.
    pt = s.domain.layout.pt_base
    assert c.read_memory(pt, 8) is not None
    assert c.request(f"M{pt:x},8:0000000000000000") == b"E0e"


def test_malformed_packets_get_error_or_empty_replies_and_the_stub_keeps_serving(stub_for):
    s = stub_for(HELLO)
    c = s.client(no_ack=False)
    c.send_raw(b"$g#00")                                   # bad checksum: a NAK in ack mode
    assert c.sock.recv(1) == b"-"
    c.send_raw(b"\x01garbage\xff$$$#")                     # junk between packets
    assert c.request("qC") == b"QC1"
    assert c.start_no_ack() == b"OK"
    c.send_raw(b"$qC#00")                                  # no-ack mode: dropped silently
    for pkt, want in [("qUnknownThing", b""), ("vFile:open:x", b""), ("!", b""), ("Q", b""), ("j", b""),
                      ("mzz,8", b"E16"), (f"m{ENTRY:x}", b"E16"), (f"M{ENTRY:x},2:abc", b"E16"),
                      (f"M{ENTRY:x},2:ab", b"E16"), ("p", b"E16"), ("pzz", b"E16"), ("P0=12", b"E16"),
                      ("Pffff=00", b"E16"), ("Z9,0,1", b""), ("Z0,zz,1", b"E16"), ("Z0,1", b"E16"),
                      ("Z2,0,8", b"E0e"), (f"Z2,{ENTRY:x},0", b"E16"), ("Hgfff", b"E16"), ("T5", b"E16"),
                      ("qRcmd,zz", b"E16"), ("qXfer:features:read:other.xml:0,10", b"E16"),
                      ("qXfer:features:read:target.xml:zz", b"E16"), ("vCont;x", b"E16"), ("vCont;", b"E16"),
                      ("G00", b"OK"), ("qThreadExtraInfo,9", b"E16"), ("", b"")]:
        assert c.request(pkt) == want, pkt
    # Still serving, still at the entry.
    assert reg(c.request("g"), "rip") == ENTRY
    assert s.domain.state == "paused"


def test_breakpoint_step_and_continue_to_shutdown(stub_for):
    s = stub_for(HELLO)
    c = s.client()
    check = sym(s, "check")
    assert c.request(f"Z0,{check:x},1") == b"OK"
    stop = stop_fields(c.request("c"))
    assert stop["signal"] == "05" and "hwbreak" not in stop
    assert reg(c.request("g"), "rip") == check
    # Continuing from a breakpoint executes it first: the next stop is the next call to check().
    calls = sym(s, "passed")
    stop_fields(c.request("vCont;c"))
    assert reg(c.request("g"), "rip") == check
    assert c.read_memory(calls, 4) == b"\x01\0\0\0"
    # A step moves one instruction (check starts with push %rbp: 1 byte).
    stop = stop_fields(c.request("vCont;s:1;c"))
    assert stop["signal"] == "05"
    assert reg(c.request("g"), "rip") == check + 1
    assert c.request(f"z0,{check:x},1") == b"OK"
    assert c.request(f"z0,{check:x},1") == b"OK"            # removing twice is harmless
    assert c.request("c") == b"W00"                         # poweroff, exit status 0
    assert s.join() == "shutdown"


def test_hardware_breakpoint_reports_hwbreak(stub_for):
    s = stub_for(HELLO)
    c = s.client()
    assert c.request(f"Z1,{sym(s, 'guest_main'):x},1") == b"OK"
    stop = stop_fields(c.request("c"))
    assert "hwbreak" in stop
    assert reg(c.request("g"), "rip") == sym(s, "guest_main")


def test_stepping_the_syscall_in_the_hypercall_page_runs_the_whole_hypercall(stub_for):
    s = stub_for(HELLO)
    c = s.client()
    page = s.domain.image.notes.hypercall_page
    syscall = page + 32 * 17 + 8                         # xen_version's slot: push, push, mov, syscall
    assert c.request(f"Z0,{syscall:x},1") == b"OK"
    stop_fields(c.request("c"))
    g = c.request("g")
    assert reg(g, "rip") == syscall and reg(g, "rax") == 17
    before = s.domain.clock.icount
    stop_fields(c.request("s"))
    g = c.request("g")
    assert reg(g, "rip") == syscall + 2
    assert reg(g, "rax") == 0x40013                     # XENVER_version: 4.19
    assert s.domain.clock.icount == before + 1          # one instruction, one nanosecond


def test_watchpoint_stops_after_the_write_and_names_the_address(stub_for):
    s = stub_for(HELLO)
    c = s.client()
    passed = sym(s, "passed")
    assert c.request(f"Z2,{passed:x},4") == b"OK"
    stop = stop_fields(c.request("c"))
    assert int(stop["watch"], 16) == passed
    assert c.read_memory(passed, 4) == b"\x01\0\0\0"        # the write happened exactly once
    rip = reg(c.request("g"), "rip")
    assert s.domain.symbols.lookup(rip)[0] == "check"
    stop = stop_fields(c.request("c"))
    assert c.read_memory(passed, 4) == b"\x02\0\0\0"
    assert c.request(f"z2,{passed:x},4") == b"OK"
    # A read watchpoint and an access watchpoint on the same variable.
    assert c.request(f"Z3,{passed:x},4") == b"OK"
    stop = stop_fields(c.request("c"))
    assert int(stop["rwatch"], 16) == passed
    assert c.request(f"z3,{passed:x},4") == b"OK"
    assert c.request(f"Z4,{passed:x},4") == b"OK"
    stop = stop_fields(c.request("c"))
    assert int(stop["awatch"], 16) == passed
    assert c.request(f"z4,{passed:x},4") == b"OK"
    assert c.request("c") == b"W00"
    assert b"7/7 checks passed" in s.domain.console.raw["hypervisor"]


def test_ctrl_c_interrupts_a_spinning_guest(stub_for):
    s = stub_for(SELFTEST, cmdline="spin")
    c = s.client()
    c.send("c")
    assert s.wait_until(lambda: s.domain.clock.icount > 5_000_000)
    c.interrupt()
    stop = stop_fields(c.recv())
    assert stop["signal"] == "02"
    rip = reg(c.request("g"), "rip")
    assert s.domain.symbols.lookup(rip)[0] == "guest_main"
    # And again: the stub goes on serving the session.
    c.send("vCont;c")
    time.sleep(0.05)
    c.interrupt()
    assert stop_fields(c.recv())["signal"] == "02"


def test_detach_lets_the_guest_run_to_shutdown(stub_for):
    s = stub_for(HELLO)
    c = s.client()
    assert c.request(f"Z0,{sym(s, 'check'):x},1") == b"OK"
    stop_fields(c.request("c"))
    assert c.request("D") == b"OK"
    assert s.join() == "shutdown"                       # the breakpoint went with the debugger
    assert s.domain.shutdown_reason == "poweroff"


def test_kill_destroys_the_domain(stub_for):
    s = stub_for(HELLO)
    c = s.client()
    c.send("k")
    assert s.join() == "stopped"


def test_connection_dropping_mid_run_lets_the_guest_run_on_and_a_new_gdb_attach(stub_for):
    s = stub_for(SELFTEST, cmdline="spin")
    c = s.client()
    assert c.request(f"Z0,{sym(s, 'finish'):x},1") == b"OK"
    c.send("c")
    assert s.wait_until(lambda: s.stub.running)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    assert s.wait_until(lambda: s.stub.client is None and not s.stub.debug.breakpoints)
    assert not s.domain.finished
    icount = s.domain.clock.icount
    assert s.wait_until(lambda: s.domain.clock.icount > icount + 1_000_000)   # still running
    c2 = s.client()
    stop = stop_fields(c2.request("?"))                 # attaching stopped it
    assert stop["signal"] in ("02", "05")
    assert s.domain.state == "paused"
    assert c2.request("qC") == b"QC1"


def test_connection_dropping_while_halted_mid_packet(stub_for):
    s = stub_for(HELLO)
    c = s.client()
    c.send_raw(b"$m" + b"f" * 100)                      # half a packet, then gone
    c.close()
    assert s.join() == "shutdown"
    assert not any("Traceback" in m or "internal error" in m for m in s.messages)


def test_a_client_that_stops_reading_is_dropped(stub_for):
    s = stub_for(SELFTEST, cmdline="spin")
    s.stub.send_timeout = 0.3
    c = s.client()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = frame(f"m{sym(s, 'guest_main'):x},1000")
    try:
        for _ in range(3000):                           # ~24 MB of replies nobody reads
            c.send_raw(big)
    except OSError:
        pass
    assert s.wait_until(lambda: s.stub.client is None, timeout=30)
    c.close()
    c2 = s.client()
    assert c2.request("qC") == b"QC1"


def test_crash_stops_with_sigsegv_then_terminates(stub_for):
    s = stub_for(SELFTEST, cmdline="earlyfault")
    c = s.client()
    stop = stop_fields(c.request("c"))
    assert stop["signal"] == "0b"
    assert any(b"crashed" in line for line in c.console)
    rip = reg(c.request("g"), "rip")
    assert s.domain.symbols.lookup(rip)[0] == "guest_main"
    assert c.request("?")[:3] == b"T0b"
    assert c.request("c") == b"X0b"
    assert s.join() == "crashed"


def test_monitor_commands(stub_for):
    s = stub_for(HELLO)
    c = s.client()

    def monitor(cmd: str) -> str:
        c.console.clear()
        assert c.request("qRcmd," + cmd.encode().hex()) == b"OK"
        return b"".join(c.console).decode()
    assert "interdomain d0" in monitor("evtchn")
    assert "state paused" in monitor("domain") and "magic xen-3.0-x86_64" in monitor("domain")
    assert 'name = "hello"' in monitor("store ls")
    assert monitor("store read name") == "hello\n"
    assert "ENOENT" in monitor("store ls /nonexistent")
    assert "unknown command" in monitor("frobnicate")
    assert "monitor hypercalls" in monitor("help")
    assert monitor("hypercalls") == "no hypercalls yet\n"
    assert "catchpoint" in monitor("catch hypercall xen_version")
    assert "xen_version" in monitor("catch list")
    stop_fields(c.request("c"))
    assert reg(c.request("g"), "rip") == s.domain.image.notes.hypercall_page + 32 * 17
    assert any(b"Catchpoint: hypercall xen_version(" in line for line in c.console)
    assert "deleted 1" in monitor("catch delete xen_version")
    assert "console_io" in monitor("hypercalls 5")
    assert "tracing" in monitor("trace on hypercalls,exceptions")
    c.console.clear()
    assert c.request("c") == b"W00"
    text = b"".join(c.console).decode()
    assert "hypercall  sched_op(shutdown" in text and "from guest_main+" in text
    assert s.join() == "shutdown"


def test_struct_packing_of_registers_matches_gdb_sizes():
    # st0 is 10 bytes (64-bit mantissa + 16-bit sign/exponent), as gdb's i387_ext.
    assert tdesc.REGISTERS[tdesc.BY_NAME["st0"]].size == 10
    assert struct.calcsize("<QH") == 10


def test_connection_dropping_while_trace_output_flows(stub_for):
    """The O packets of `monitor trace on` are sent from inside CPU hooks: a send failing there must not
    tear hooks down under Unicorn. The session detaches at the next boundary and the guest runs on."""
    s = stub_for(SELFTEST, cmdline="bench hypercalls 20000")
    c = s.client()
    assert c.request("qRcmd," + b"trace on hypercalls".hex()) == b"OK"
    assert c.request(f"Z0,{sym(s, 'finish'):x},1") == b"OK"
    c.send("c")
    assert s.wait_until(lambda: len(c.sock.recv(65536)) > 0)       # trace output is flowing
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()                                                      # reset: the stub's next send fails
    assert s.join() == "shutdown"                                  # the breakpoint at finish went too
    assert "bench: 20000 hypercalls" in s.domain.console.text
    assert not any("internal error" in m for m in s.messages), s.messages


def test_killing_a_detached_running_guest(stub_for):
    s = stub_for(SELFTEST, cmdline="spin")
    finals = []
    s.call(lambda: s.domain.on_final.append(finals.append))
    c = s.client()
    assert c.request("D") == b"OK"
    assert s.wait_until(lambda: s.stub.in_domain_run)
    s.call(s.stub.kill)
    assert s.join() == "stopped"
    assert len(finals) == 1                              # the domain ended once


def test_random_packets_never_break_the_stub(stub_for):
    """A fixed-seed storm of malformed and random packets (everything but the ones that resume or end the
    session): every packet gets a reply, none is an internal error, and the session still works."""
    import random
    rng = random.Random(1234)
    s = stub_for(HELLO)
    c = s.client()
    heads = ["m", "M", "X", "g", "G", "p", "P", "Z0", "Z1", "Z2", "Z3", "Z4", "z0", "z2", "H", "T", "q", "Q",
             "qXfer:features:read:", "qRcmd,", "qThreadExtraInfo,", "?", "vCont?", "x", "_", "}"]
    alphabet = "0123456789abcdefABCDEF,:;=-xyz#$}*\x00\xff"
    addresses = [0, ENTRY, sym(s, "passed"), sym(s, "check"), s.domain.layout.pt_base, 0xFFFF800000000000,
                 0xFFFF820000000000, (1 << 64) - 8, 0x0000800000000000]
    kinds = set()
    for _ in range(800):
        head = rng.choice(heads)
        r = rng.random()
        if r < 0.4:                                     # garbage
            body = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        else:                                           # well-formed fields, hostile values
            addr = rng.choice(addresses) + rng.randrange(-16, 16)
            length = rng.choice((0, 1, 4, 8, 0x1000, 0xFFFFFFFF, rng.getrandbits(64)))
            data = bytes(rng.getrandbits(8) for _ in range(min(length, 16))).hex()
            body = {"m": f"{addr:x},{length:x}", "M": f"{addr:x},{length:x}:{data}",
                    "X": f"{addr:x},{length:x}:", "p": f"{rng.randrange(0, 80):x}",
                    "P": f"{rng.randrange(0, 80):x}={data}", "G": data}.get(head, f",{addr:x},{length:x}")
            body = body.replace("-", "")
        reply = c.request((head + body).encode("latin-1"))
        kinds.add(reply[:1])
        assert reply != b"E01" or head == "P", (head + body, reply)    # E01: only a read-only register
    assert {b"E", b"O", b"", b"0"} <= kinds | {b"0"} and b"T" in kinds
    assert not any("internal error" in m for m in s.messages), s.messages
    assert c.request("qC") == b"QC1"
    c.request(f"z0,{sym(s, 'check'):x},1")
    assert reg(c.request("g"), "cs") == 0xE033
