"""Fault injection: make chosen hypercalls fail, drop or delay event notifications, fail xenstore requests.

A guest's error paths (what Mini-OS does when EVTCHNOP_bind_virq says ENOSPC, when a xenstore read says
ENOENT, when a notification never arrives) are the code that is never run and never tested. Rules name what
to break and on which occurrence; everything they inject is a real Xen errno, so the guest sees exactly what
a real Xen could have told it, and each injection appears in the trace as its own `inject` record.

Rule language (`--inject RULE`, repeatable; `FaultInjector(["..."])` from Python):

    hypercall:NAME[:SUBOP]:ERRNO[@WHEN]       hypercall:event_channel_op:bind_virq:-ENOSPC@1
    event:drop:SELECTOR[@WHEN]                event:drop:port=3@2
    event:delay:SELECTOR:NANOSECONDS[@WHEN]   event:delay:port=3:1000000
    xenstore:OP[:path=GLOB]:ERRNO[@WHEN]      xenstore:read:ENOENT@1   xenstore:*:path=device/*:EACCES

NAME is a hypercall name (`*` for any), SUBOP a sub-op name as traces show it. ERRNO is a Xen errno name
(`ENOSPC`, `-ENOSPC`) or number; xenstore errors must be one xenstored can send (xs_wire.h's xsd_errors).
SELECTOR is `port=N` or `virq=NAME|N`, optionally `,dir=raise|send`: `raise` (default) is a notification
*to* the guest (a VIRQ, an IPI, dom0 kicking a ring), `send` one *from* the guest to a dom0 backend. A
delayed notification is delivered that many virtual nanoseconds later. OP is a xenstore message type
(`read`, `write`, `directory`, `watch`, `transaction_start`, ... or `*`); GLOB matches the path as the guest
wrote it or its absolute form. WHEN counts the rule's matching occurrences from 1: `1`, `2-4`, `3+`,
`1,5`, `*` (every one, the default).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

from miniguest.abi import errno as E
from miniguest.abi.event_channel import EVTCHNSTAT_virq
from miniguest.abi.xen import VIRQ_NAMES
from miniguest.abi.xs_wire import XS_NAMES
from miniguest.backends.xenstore import XenstoreDaemon
from miniguest.hypervisor.host import HYPERCALLS
from miniguest.toolstack.libxl import Guest

if TYPE_CHECKING:
    from miniguest.backends.xenstore.connection import Connection
    from miniguest.hypervisor.host import Domain, Hypercall, Vcpu

# xenstored can only send these errno names (xs_wire.h xsd_errors); see backends/xenstore/connection.py.
XENSTORE_ERRNOS = frozenset({"EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
                             "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM"})


class RuleError(ValueError):
    """A fault-injection rule that cannot be parsed or names something that does not exist."""


@dataclass(frozen=True)
class When:
    """Which matching occurrences (1-based) a rule fires on: ranges (lo, hi), hi None = open-ended."""

    ranges: tuple[tuple[int, Optional[int]], ...] = ((1, None),)

    @classmethod
    def parse(cls, text: str) -> "When":
        text = text.strip()
        if text in ("", "*"):
            return cls()
        ranges = []
        for part in text.split(","):
            part = part.strip()
            try:
                if part.endswith("+"):
                    lo, hi = int(part[:-1]), None
                elif "-" in part:
                    a, b = part.split("-", 1)
                    lo, hi = int(a), int(b)
                else:
                    lo = hi = int(part)
            except ValueError:
                raise RuleError(f"bad occurrence {part!r} (use N, N-M, N+, a comma list or *)") from None
            if lo < 1 or (hi is not None and hi < lo):
                raise RuleError(f"bad occurrence {part!r}: occurrences count from 1")
            ranges.append((lo, hi))
        return cls(tuple(ranges))

    def hits(self, n: int) -> bool:
        return any(lo <= n and (hi is None or n <= hi) for lo, hi in self.ranges)


@dataclass
class Rule:
    """One parsed rule. `count` is how many occurrences matched so far, `fired` how many were injected."""

    target: str                              # "hypercall" | "event" | "xenstore"
    text: str
    when: When = field(default_factory=When)
    errno: int = 0                           # positive errno value (hypercall, xenstore)
    name: str = "*"                          # hypercall name
    subop: Optional[str] = None              # hypercall sub-op (None: any)
    action: str = ""                         # event: "drop" | "delay"
    delay_ns: int = 0
    port: Optional[int] = None
    virq: Optional[int] = None
    direction: str = "raise"                 # event: "raise" (to the guest) | "send" (guest -> dom0)
    op: str = "*"                            # xenstore message type, e.g. "READ"
    path: Optional[str] = None               # xenstore path glob
    count: int = 0
    fired: int = 0

    def occurrence(self) -> bool:
        """Count one matching occurrence; True if the rule fires on it."""
        self.count += 1
        if self.when.hits(self.count):
            self.fired += 1
            return True
        return False


def _errno(text: str) -> int:
    t = text.strip().lstrip("-")
    if t.isdigit():
        value = int(t)
        if value not in E.NAMES:
            raise RuleError(f"{text!r} is not a Xen errno")
        return value
    value = getattr(E, t, None)
    if not isinstance(value, int) or not t.startswith("E"):
        raise RuleError(f"{text!r} is not a Xen errno (e.g. ENOSPC, -ENOENT, -28)")
    return value


def _known_subops(name: str) -> Optional[set[str]]:
    hc = HYPERCALLS.by_name(name)
    if hc is None or hc.handler is None:
        return None
    return {row.name for row in hc.subops} if hc.subop_arg is not None else set()


def _virq(text: str) -> int:
    t = text.strip().upper()
    if t.isdigit():
        return int(t)
    for value, name in VIRQ_NAMES.items():
        if name in (t, f"VIRQ_{t}"):
            return value
    raise RuleError(f"unknown VIRQ {text!r}")


def parse_rule(text: str) -> Rule:
    """Parse one `--inject` rule (see the module docstring); RuleError says what is wrong in one line."""
    try:
        return _parse(text)
    except RuleError as e:
        raise RuleError(f"bad --inject rule {text!r}: {e}") from None


def _parse(text: str) -> Rule:
    body, when = text, When()
    if "@" in text:
        body, when_text = text.rsplit("@", 1)
        when = When.parse(when_text)
    parts = body.split(":")
    target = parts[0].strip().lower()
    if target == "hypercall":
        if len(parts) not in (3, 4):
            raise RuleError("expected hypercall:NAME[:SUBOP]:ERRNO")
        name = parts[1].strip()
        subop = parts[2].strip() if len(parts) == 4 else None
        if name != "*" and HYPERCALLS.by_name(name) is None:
            raise RuleError(f"unknown hypercall {name!r}")
        if subop not in (None, "*") and name != "*":
            known = _known_subops(name)
            if known is not None and subop not in known:
                hint = f" (one of: {', '.join(sorted(known))})" if known else " (it has no sub-ops)"
                raise RuleError(f"{name} has no sub-op {subop!r}{hint}")
        return Rule("hypercall", text, when, errno=_errno(parts[-1]), name=name,
                    subop=None if subop in (None, "*") else subop)
    if target == "event":
        if len(parts) < 3:
            raise RuleError("expected event:drop:SELECTOR or event:delay:SELECTOR:NANOSECONDS")
        action = parts[1].strip().lower()
        rule = Rule("event", text, when, action=action)
        if action == "drop" and len(parts) == 3:
            pass
        elif action == "delay" and len(parts) == 4:
            try:
                rule.delay_ns = int(parts[3])
            except ValueError:
                raise RuleError(f"delay {parts[3]!r} is not a number of nanoseconds") from None
            if rule.delay_ns <= 0:
                raise RuleError("a delay must be positive")
        else:
            raise RuleError("expected event:drop:SELECTOR or event:delay:SELECTOR:NANOSECONDS")
        for item in parts[2].split(","):
            key, _, value = item.partition("=")
            key = key.strip().lower()
            if key == "port" and value.strip().isdigit():
                rule.port = int(value)
            elif key == "virq" and value:
                rule.virq = _virq(value)
            elif key == "dir" and value.strip() in ("raise", "send"):
                rule.direction = value.strip()
            else:
                raise RuleError(f"bad selector {item!r} (port=N, virq=NAME, dir=raise|send)")
        if rule.port is None and rule.virq is None:
            raise RuleError("an event rule needs port=N or virq=NAME")
        if rule.virq is not None and rule.direction == "send":
            raise RuleError("a VIRQ is only ever raised to the guest (dir=send makes no sense)")
        return rule
    if target == "xenstore":
        if len(parts) not in (3, 4):
            raise RuleError("expected xenstore:OP[:path=GLOB]:ERRNO")
        op = parts[1].strip().upper()
        if op != "*" and f"XS_{op}" not in XS_NAMES.values():
            raise RuleError(f"unknown xenstore message type {parts[1]!r}")
        path = None
        if len(parts) == 4:
            key, _, path = parts[2].partition("=")
            if key.strip() != "path" or not path:
                raise RuleError(f"expected path=GLOB, got {parts[2]!r}")
        err = _errno(parts[-1])
        if E.name(err) not in XENSTORE_ERRNOS:
            raise RuleError(f"xenstored cannot send {E.name(err)} (one of: {', '.join(sorted(XENSTORE_ERRNOS))})")
        return Rule("xenstore", text, when, errno=err, op=op, path=path)
    raise RuleError(f"unknown target {parts[0]!r} (hypercall, event or xenstore)")


class FaultInjector:
    """Applies rules to one domain. Assign it (`domain.fault_injector = FaultInjector([...])`) or call
    `attach(domain)`; hypercall rules work through the dispatch table's own check, event rules through the
    event-channel hook, xenstore rules through xenstored's message hook (attached on first use).

    `injected` lists every injection as the dict its trace record holds."""

    def __init__(self, rules: Iterable[Union[Rule, str]] = ()) -> None:
        self.rules: list[Rule] = [r if isinstance(r, Rule) else parse_rule(r) for r in rules]
        self.injected: list[dict[str, Any]] = []
        self.domain: Optional["Domain"] = None
        self._daemon: Optional[XenstoreDaemon] = None

    # -- wiring -------------------------------------------------------------------------------------------
    def attach(self, domain: "Domain") -> "FaultInjector":
        domain.fault_injector = self
        self._bind(domain)
        return self

    def _bind(self, domain: "Domain") -> None:
        if self.domain is domain:
            return
        self.domain = domain
        daemon = domain.xenstored if isinstance(domain, Guest) else None
        if daemon is not None and any(r.target == "xenstore" for r in self.rules):
            daemon.message_hooks.append(self._xenstore_hook)
            self._daemon = daemon

    def detach(self) -> None:
        if self._daemon is not None and self._xenstore_hook in self._daemon.message_hooks:
            self._daemon.message_hooks.remove(self._xenstore_hook)
        if self.domain is not None and self.domain.fault_injector is self:
            self.domain.fault_injector = None
        self._daemon = None
        self.domain = None

    def _active(self) -> bool:
        return self.domain is not None and self.domain.fault_injector is self

    def _emit(self, rule: Rule, **fields: Any) -> None:
        rec = {"target": rule.target, "rule": rule.text, "occurrence": rule.count, **fields}
        self.injected.append(rec)
        if self.domain is not None:
            self.domain.emit("inject", **rec)

    # -- the hypervisor's FaultInjection interface (hypervisor/intercept.py) -------------------------------
    def hypercall_fault(self, vcpu: "Vcpu", hc: "Hypercall", args: tuple[int, ...]) -> Optional[int]:
        self._bind(vcpu.domain)
        result = None
        subop = hc.subop_name(args)
        for rule in self.rules:
            if rule.target != "hypercall" or rule.name not in ("*", hc.name):
                continue
            if rule.subop is not None and rule.subop != subop:
                continue
            if rule.occurrence() and result is None:
                result = -rule.errno
                self._emit(rule, name=hc.name, subop=subop, errno=E.name(rule.errno))
        return result

    def event_fault(self, domain: "Domain", port: int, direction: str) -> bool:
        """True if this notification was dropped or delayed (the caller must then not deliver it)."""
        self._bind(domain)
        taken = False
        p = domain.events.ports.get(port)
        virq = p.virq if p is not None and p.state == EVTCHNSTAT_virq else None
        for rule in self.rules:
            if rule.target != "event" or rule.direction != direction:
                continue
            if rule.port is not None and rule.port != port:
                continue
            if rule.virq is not None and rule.virq != virq:
                continue
            if not rule.occurrence() or taken:
                continue
            taken = True
            if rule.action == "drop":
                self._emit(rule, action="drop", port=port, dir=direction)
            else:
                deadline = domain.clock.now_ns() + rule.delay_ns
                self._emit(rule, action="delay", port=port, dir=direction, delay_ns=rule.delay_ns)
                domain.events.deliver_later(port, direction, deadline)
        return taken

    # -- xenstore (xenstored's message hook, intercept.MessageHook) ---------------------------------------
    def _xenstore_hook(self, conn: "Connection", direction: str, msg_type: int, req_id: int, tx_id: int,
                       payload: bytes) -> Optional[str]:
        if direction != "request" or self.domain is None or not self._active() or conn.domid != self.domain.domid:
            return None
        type_name = XS_NAMES.get(msg_type, "")[3:]
        first = bytes(payload).split(b"\0", 1)[0].decode("latin-1")
        for rule in self.rules:
            if rule.target != "xenstore" or rule.op not in ("*", type_name):
                continue
            if rule.path is not None and not self._path_matches(conn, rule.path, first):
                continue
            if rule.occurrence():
                self._emit(rule, op=type_name, path=first, errno=E.name(rule.errno))
                return E.name(rule.errno)
        return None

    @staticmethod
    def _path_matches(conn: "Connection", pattern: str, path: str) -> bool:
        if fnmatch.fnmatchcase(path, pattern):
            return True
        absolute = path if path.startswith("/") else f"{conn.implicit_path}/{path}"
        return fnmatch.fnmatchcase(absolute, pattern)
