"""Snapshot a stopped domain to a file and restore it into fresh domains, as often as wanted.

    snap = Snapshot.capture(domain)          # domain stopped: run(until=...) returned, or finished
    snap.save("boot.snap")                   # docs/snapshot-format.md
    dom = Snapshot.load("boot.snap").restore()   # a new Domain (new Host), ready to run() on
    dom2 = snap.restore(console_output=print)    # again, from the same in-memory snapshot

Why a restore builds a fresh domain through the toolstack first: the console and xenstore backends, the
dom0 event-channel ends and the domain's hooks are wired exactly as for a normal boot, by the same code;
the snapshot then overwrites every piece of state: all machine memory, the frame table (owners, page
types, type counts, pins), the p2m, event channels, timers (re-created from their deadlines, in their
original order, so equal deadlines still fire in the same order), the PV vCPU state and its registers,
the virtual clock, the xenstore store with the domain's connection, and the console backend and log.
What it holds is data, never pickled objects: a snapshot file is untrusted input, checked field by field.
Every object saves and restores its own part (hypervisor/save.py): this module only checks that a domain
can be snapshotted, composes the parts into one file and hands each part back to its object.

The guarantee tests rely on: a domain stopped at a point P, snapshotted, restored and run to its end
produces the same remaining trace as the original domain continuing from P.
"""
from __future__ import annotations

import hashlib
import os
import uuid as uuidlib
from typing import TYPE_CHECKING, Any, Callable, Optional

from miniguest import __version__
from miniguest.hypervisor.host import Domain, Host
from miniguest.hypervisor.save import Fields, StateError
from miniguest.toolstack.libelf import ImageError
from miniguest.toolstack.libxl import Guest, create_domain

from .snapfile import Container, SnapshotError, read_file

if TYPE_CHECKING:
    from miniguest.hypervisor.host import Vcpu

FORMAT = "miniguest-snapshot"
VERSION = 2              # 2: the frame table carries flags (validated, pinned, Xen heap) and linear counts
SECTIONS = ("image", *Domain.SAVED_SECTIONS)

# Domain attributes: carried (by Domain.save or the toolstack's backends) or rebuilt/attached anew by the
# toolstack. An attribute in neither is state nobody saves yet: tests/regress/test_snapshot.py fails.
DOMAIN_CARRIED = ("nr_pages", "tot_pages", "max_pages", "vm_assist", "grants", "domid", "state", "shutdown_reason",
                  "shutdown_code", "crash_report", "messages", "_logged", "hv_console_input", "watchdogs", "p2m",
                  "uuid", "handle", "clock", "timers", "events", "frames", "xen", "mem", "vcpus", "console",
                  "console_backend", "xenstored", "pirq_eoi_mfn", "pirq_eoi_auto_unmask")
DOMAIN_REBUILT = ("config", "host", "name", "image", "symbols", "layout", "start_info_va", "store", "hypercalls",
                  "foreign_mapped", "disks",
                  "hv_console_sink", "hypercall_observers", "trace_sinks", "fault_injector", "on_final", "on_idle",
                  "_pause_requested", "_interrupted", "budget_exhausted", "hang_checks", "hang_reason", "_shared_info", "internal_traceback",
                  "idle_follows_host")


# -- capture ---------------------------------------------------------------------------------------------------
def capture_header(domain: "Domain") -> tuple[dict[str, Any], dict[str, bytes]]:
    if domain.state == "running":
        raise SnapshotError("cannot snapshot a running domain: stop it first (run(until=...) or pause())")
    if domain.clock.realtime:
        raise SnapshotError("cannot snapshot a --realtime domain: its clock follows the host")
    if not isinstance(domain, Guest) or domain.image is None:
        raise SnapshotError("cannot snapshot a domain not built by the toolstack (Domain.from_elf)")
    if domain.disks:
        raise SnapshotError("cannot snapshot a domain with disks (their backends' state is not carried)")
    try:
        record, sections = domain.save()
    except StateError as e:
        raise SnapshotError(f"cannot snapshot: {e}") from None
    cfg = domain.config
    image = domain.image
    sections["image"] = bytes(image.raw)
    if cfg.module:
        sections["module"] = bytes(cfg.module)
    header: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "generator": f"miniguest {__version__}",
        "image": {"name": os.path.basename(image.path), "sha256": hashlib.sha256(image.raw).hexdigest()},
        "config": {"name": cfg.name, "memory_mib": cfg.memory_mib, "cmdline": cfg.cmdline,
                   "scramble_mfns": cfg.scramble_mfns, "max_instructions": cfg.max_instructions,
                   "wallclock": list(cfg.wallclock), "uuid": domain.uuid, "poison_memory": cfg.poison_memory,
                   "max_memory_mib": cfg.max_memory_mib},
        **record,
    }
    return header, sections


# -- restore ---------------------------------------------------------------------------------------------------
def _check_header(h: dict[str, Any]) -> None:
    if h.get("format") != FORMAT:
        raise SnapshotError("snapshot: not a miniguest domain snapshot")
    if h.get("version") != VERSION:
        raise SnapshotError(f"snapshot: header version {h.get('version')!r} is not supported "
                            f"(this miniguest reads version {VERSION})")


class Snapshot:
    """A captured domain, in memory. Cheap to restore repeatedly: the memory image is expanded once."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.header = container.header
        _check_header(self.header)
        for name in SECTIONS:
            if name not in container.sections:
                raise SnapshotError(f"snapshot: section {name!r} is missing")
        try:
            image = Fields(self.header.get("image"), "image")
            digest = image.str("sha256")
        except StateError as e:
            raise SnapshotError(f"snapshot: {e}") from None
        if hashlib.sha256(container.sections["image"]).hexdigest() != digest:
            raise SnapshotError("snapshot: the embedded kernel image does not match its hash")
        self._memory: Optional[bytes] = None

    # -- files ----------------------------------------------------------------------------------------------
    @classmethod
    def capture(cls, domain: "Domain") -> "Snapshot":
        header, sections = capture_header(domain)
        return cls(Container(header, sections))

    def to_bytes(self, compress_level: int = 1) -> bytes:
        return self.container.to_bytes(compress_level)

    def save(self, path: str, compress_level: int = 1) -> None:
        data = self.to_bytes(compress_level)
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as e:
            raise SnapshotError(f"{path}: {e.strerror}") from None

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "snapshot") -> "Snapshot":
        return cls(Container.from_bytes(data, name))

    @classmethod
    def load(cls, path: str) -> "Snapshot":
        return cls.from_bytes(read_file(path), path)

    # -- facts ----------------------------------------------------------------------------------------------
    @property
    def time_ns(self) -> int:
        """Virtual time of the snapshot point (SnapshotError if the clock fields are not integers)."""
        try:
            c = Fields(self.header.get("clock"), "clock")
            return c.int("icount") + c.int("idle_ns")
        except SnapshotError:
            raise
        except StateError as e:
            raise SnapshotError(f"snapshot: {e}") from None

    def info(self) -> dict[str, Any]:
        """What `snapshot info` shows; the fields are checked (an untrusted file), SnapshotError if not."""
        h = self.header
        try:
            image = Fields(h.get("image"), "image")
            domain = Fields(h.get("domain"), "domain")
            config = Fields(h.get("config"), "config")
            facts = {"image": image.str("name"), "state": domain.str("state"), "time_ns": self.time_ns,
                     "memory_mib": config.int("memory_mib", 1, 4096), "cmdline": config.str("cmdline")}
        except SnapshotError:
            raise
        except StateError as e:
            raise SnapshotError(f"snapshot: {e}") from None
        generator = h.get("generator")
        facts["generator"] = generator if isinstance(generator, str) and len(generator) < 256 else None
        return facts

    # -- restore --------------------------------------------------------------------------------------------
    def restore(self, console_output: Optional[Callable[[bytes], None]] = None, host: Optional[Host] = None,
                **options: Any) -> "Domain":
        """A new domain in the snapshot's state (on a new Host unless one is given). `options` go to the
        toolstack (e.g. store_socket=, max_instructions= to change the budget)."""
        try:
            return self._restore(console_output, host, options)
        except SnapshotError:
            raise
        except StateError as e:
            raise SnapshotError(f"snapshot: {e}") from None

    def _restore(self, console_output: Optional[Callable[[bytes], None]], host: Optional[Host],
                 options: dict[str, Any]) -> Guest:
        h = Fields(self.header, "header")
        cfg = h.sub("config")
        domid = h.sub("domain").int("domid", 1, 0x7FEF)
        if host is None:
            host = Host(first_domid=domid)        # same domid: frame owners and store paths name it
        try:
            uuid = str(uuidlib.UUID(cfg.str("uuid")))
        except ValueError:
            raise SnapshotError("snapshot: config.uuid is not a UUID") from None
        wall = cfg.ints("wallclock", 0, (1 << 64) - 1, 2)
        opts: dict[str, Any] = dict(memory_mib=cfg.int("memory_mib", 1, 4096), cmdline=cfg.str("cmdline"),
                                    name=cfg.str("name"), scramble_mfns=cfg.bool("scramble_mfns"),
                                    max_instructions=cfg.int("max_instructions", optional=True),
                                    wallclock=(wall[0], wall[1]) if len(wall) == 2 else None,
                                    poison_memory=cfg.bool("poison_memory"),
                                    maxmem=cfg.int("max_memory_mib", 0, 4096, optional=True),
                                    module=self.container.sections.get("module"), uuid=uuid)
        opts.update(options)
        try:
            domain = create_domain(h.sub("image").str("name"), console_output=console_output,
                                   host=host, image_data=self.container.sections["image"], **opts)
        except ImageError as e:
            raise SnapshotError(f"snapshot: cannot rebuild the domain: {e}") from None
        try:
            self._apply(domain, h)
        except BaseException:
            domain.close()
            raise
        return domain

    def memory_image(self, domain: Guest) -> bytes:
        if self._memory is None:
            self._memory = domain.expand_saved_memory(self.container.sections["memory"])
        return self._memory

    def _apply(self, domain: Guest, h: Fields) -> None:
        try:
            domain.restore(h, self.container.sections, self.memory_image(domain))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise SnapshotError(f"snapshot: malformed state ({type(e).__name__}: {e})") from None


class PauseAfterHypercalls:
    """A hypercall observer (intercept.HypercallObserver): pause the domain right after its n-th hypercall (a defined snapshot point)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def before(self, vcpu: "Vcpu", nr: int, args: tuple[int, ...]) -> None:
        pass

    def after(self, vcpu: "Vcpu", nr: int, args: tuple[int, ...], result: Optional[int]) -> None:
        self.seen += 1
        if self.seen == self.n:
            vcpu.domain.pause()


def save_snapshot(domain: "Domain", path: str, compress_level: int = 1) -> Snapshot:
    snap = Snapshot.capture(domain)
    snap.save(path, compress_level)
    return snap


def restore_snapshot(path: str, **options: Any) -> "Domain":
    return Snapshot.load(path).restore(**options)
