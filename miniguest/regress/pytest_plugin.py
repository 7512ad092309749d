"""The miniguest pytest plugin (entry point `pytest11`): boot guests in tests, golden traces, XTF results.

Fixtures
  boot_guest   factory: `run = boot_guest(image, cmdline=..., inject=[...], until=None, **options)` boots a
               guest (traced) and, unless run=False, runs it to its end; the result is a GuestRun with
               .domain, .console, .state, .shutdown_reason, .trace, .store, .xtf_result. Domains are
               closed at teardown.
  golden       `golden.check("hello", run)` compares the run's trace with <golden dir>/hello.jsonl (the ini
               option `miniguest_golden_dir`, default tests/golden); `--update-golden` rewrites it instead.
  xtf_run      the GuestRun of a test marked `@pytest.mark.xtf(image, **options)`.

XTF results. Xen Test Framework guests end by printing `Test result: SUCCESS|SKIP|ERROR|FAILURE` (common/
report.c: xtf_report_status, "with warnings" may follow SUCCESS); like xtf-runner, the result is read from
the console's last line and anything else is a CRASH. A test marked `xtf` boots its guest during setup:
SUCCESS passes, SKIP skips, FAILURE fails the test, ERROR and CRASH are errors (setup failures), so pytest's
summary counts them as XTF does. With `--xtf`, XTF binaries named test-pv64-* are collected as tests, one
per configuration file XTF puts beside them (`test-pv64-NAME~VARIATION.cfg`: memory=, extra=, vcpus=), as
xtf-runner runs them.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import pytest

# Only light imports here: every pytest session on a machine with miniguest installed loads this plugin.
XTF_RESULTS = ("SUCCESS", "SKIP", "ERROR", "FAILURE", "CRASH")
XTF_PATTERN = "test-pv64-*"


class XtfError(Exception):
    """An XTF guest reported ERROR (a problem with the test itself) or no result at all (CRASH)."""


def xtf_result(console: str) -> str:
    """The XTF result of a console transcript, as xtf-runner's interpret_result reads the final line."""
    lines = [line for line in console.replace("\r", "").split("\n") if line.strip()]
    last = lines[-1] if lines else ""
    if "Test result:" not in last:
        return "CRASH"
    for res in XTF_RESULTS:
        if res in last:
            return res
    return "CRASH"


@dataclass
class GuestRun:
    """A booted guest and what a test looks at."""

    domain: Any
    tracer: Any
    image: str
    closed: bool = field(default=False, repr=False)

    def run(self, until: Optional[Callable[[Any], bool]] = None) -> str:
        return self.domain.run(until=until)

    @property
    def console(self) -> str:
        return self.domain.console.text

    @property
    def state(self) -> str:
        return self.domain.state

    @property
    def shutdown_reason(self) -> Optional[str]:
        return self.domain.shutdown_reason

    @property
    def trace(self) -> list:
        return self.tracer.records if self.tracer is not None else []

    @property
    def store(self) -> Any:
        return self.domain.store

    @property
    def xtf_result(self) -> str:
        return xtf_result(self.console)

    def meta(self) -> dict[str, Any]:
        from miniguest.regress.faults import FaultInjector
        from miniguest.regress.trace_files import image_meta
        fi = self.domain.fault_injector
        rules = [r.text for r in fi.rules] if isinstance(fi, FaultInjector) else None
        return image_meta(self.image, self.domain, rules)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.domain.close()


def boot(image: str, *, run: bool = True, trace: bool = True, inject: Iterable[str] = (),
         until: Optional[Callable[[Any], bool]] = None, **options: Any) -> GuestRun:
    """Build (and unless run=False, run) a traced guest. `options` go to Domain.from_elf."""
    from miniguest import Domain
    from miniguest.debug.tracer import Tracer
    from miniguest.regress.faults import FaultInjector
    dom = Domain.from_elf(image, **options)
    tracer = Tracer(dom).attach() if trace else None
    rules = list(inject)
    if rules:
        FaultInjector(rules).attach(dom)
    result = GuestRun(dom, tracer, image)
    if run:
        dom.run(until=until)
    return result


XTF_DEFAULT_BUDGET = 2_000_000_000


def _tail(console: str, lines: int = 15) -> str:
    return "\n".join(console.rstrip("\n").split("\n")[-lines:])


def xtf_outcome(run: GuestRun) -> None:
    """Map an XTF result onto pytest: SKIP skips, FAILURE fails, ERROR/CRASH raise XtfError."""
    res = run.xtf_result
    if res == "SUCCESS":
        return
    if res == "SKIP":
        pytest.skip(f"XTF: SKIP ({os.path.basename(run.image)})")
    if res == "FAILURE":
        pytest.fail(f"XTF: FAILURE ({os.path.basename(run.image)})\n{_tail(run.console)}", pytrace=False)
    raise XtfError(f"XTF: {res} ({os.path.basename(run.image)}, domain {run.state}"
                   f"{' ' + run.shutdown_reason if run.shutdown_reason else ''})\n{_tail(run.console)}")


# -- options, markers, fixtures -----------------------------------------------------------------------------
def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("miniguest")
    group.addoption("--update-golden", action="store_true", default=False,
                    help="rewrite golden traces from this run instead of comparing with them")
    group.addoption("--xtf", action="store_true", default=False,
                    help=f"collect XTF test binaries ({XTF_PATTERN}) as tests booted under miniguest")
    group.addoption("--xtf-budget", type=int, default=XTF_DEFAULT_BUDGET, metavar="INSNS",
                    help="instruction budget of each collected XTF test, like xtf-runner's timeout: one that "
                         "runs out is a CRASH (default %(default)s, 2 s of guest time)")
    parser.addini("miniguest_golden_dir", "directory of golden traces, relative to the rootdir",
                  default="tests/golden")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "xtf(image, **options): boot an XTF guest in setup; its 'Test result:' "
                                       "line is the test's outcome (see the xtf_run fixture)")


@pytest.fixture
def boot_guest(request: Any) -> Iterator[Callable[..., GuestRun]]:
    runs: list[GuestRun] = []

    def factory(image: str, **kwargs: Any) -> GuestRun:
        r = boot(image, **kwargs)
        runs.append(r)
        return r

    yield factory
    for r in runs:
        r.close()


class Golden:
    """Compares traces with golden files; `update` rewrites them (pytest --update-golden)."""

    def __init__(self, directory: str, update: bool) -> None:
        self.directory = directory
        self.update = update

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name if name.endswith(".jsonl") else name + ".jsonl")

    def check(self, name: str, run: Any, ignore: Iterable[str] = (), domain: Any = None) -> None:
        """Fail the test at the first divergence from the golden trace `name` (a GuestRun, or records with
        the `domain` they came from). Traces are compared in their normal form (miniguest.regress.normalise):
        a rebuilt guest that behaves the same still matches."""
        from miniguest.regress.golden import check as golden_check
        from miniguest.regress.normalise import NO_NAMES, AddressNames
        records = run.trace if isinstance(run, GuestRun) else list(run)
        meta = run.meta() if isinstance(run, GuestRun) else None
        domain = run.domain if isinstance(run, GuestRun) else domain
        names = AddressNames.from_domain(domain) if domain is not None else NO_NAMES
        res = golden_check(self.path(name), records, meta, update=self.update, ignore=ignore, names=names)
        if res.problem:
            pytest.fail(res.problem, pytrace=False)


@pytest.fixture
def golden(request: Any) -> Golden:
    config = request.config
    directory = os.path.join(str(config.rootpath), config.getini("miniguest_golden_dir"))
    return Golden(directory, config.getoption("update_golden"))


# -- XTF: the marker and collected binaries -----------------------------------------------------------------
_XTF_KEY = pytest.StashKey[GuestRun]()


def _boot_marked(item: Any) -> Optional[GuestRun]:
    marker = item.get_closest_marker("xtf")
    if marker is None:
        return None
    if not marker.args:
        raise XtfError("@pytest.mark.xtf needs the guest image as its first argument")
    run = boot(str(marker.args[0]), **marker.kwargs)
    item.stash[_XTF_KEY] = run
    return run


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: Any) -> None:
    run = _boot_marked(item)
    if run is None:
        return
    res = run.xtf_result
    if res in ("SKIP", "ERROR", "CRASH"):
        xtf_outcome(run)                          # skip, or an error reported against setup


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: Any) -> None:
    run = item.stash.get(_XTF_KEY, None)
    if run is not None and run.xtf_result == "FAILURE":
        xtf_outcome(run)


def pytest_runtest_teardown(item: Any) -> None:
    run = item.stash.get(_XTF_KEY, None)
    if run is not None:
        run.close()


@pytest.fixture
def xtf_run(request: Any) -> GuestRun:
    run = request.node.stash.get(_XTF_KEY, None)
    if run is None:
        raise XtfError("xtf_run is for tests marked @pytest.mark.xtf(image)")
    return run


def pytest_collect_file(file_path: Any, parent: Any) -> Optional[Any]:
    if parent.config.getoption("xtf") and fnmatch.fnmatch(file_path.name, XTF_PATTERN) and not file_path.suffix:
        return XtfFile.from_parent(parent, path=file_path)
    return None


class XtfFile(pytest.File):
    """An XTF test binary, with the xl configuration files XTF builds and installs next to it, read as
    xtf-runner reads them: a test with variations (VARY-CFG, e.g. pv-iopl's `~hypercall` and `~vmassist`)
    runs once per `test-pv64-NAME~VARIATION.cfg`, a test with `test-pv64-NAME.cfg` runs with that, and a
    bare binary runs with XTF's defaults. From a file: memory=, extra=/cmdline= (the test's command line),
    name=; vcpus= beyond 1 is warned about (one vCPU per domain for now); a kernel= path that does not exist
    here (the install prefix XTF wrote into it) is the binary beside the file."""

    def collect(self) -> Iterable[Any]:
        base = self.path.name
        variations = sorted(self.path.parent.glob(glob_escape(base) + "~*.cfg"))
        plain = self.path.parent / (base + ".cfg")
        cfgs = variations or ([plain] if plain.is_file() else [])
        if not cfgs:
            yield XtfItem.from_parent(self, name=base)
            return
        for cfg in cfgs:
            yield XtfItem.from_parent(self, name=cfg.name[:-len(".cfg")], cfg=cfg)


def glob_escape(name: str) -> str:
    import glob
    return glob.escape(name)


class XtfItem(pytest.Item):
    """One XTF test instance: booted in setup (SKIP/ERROR/CRASH decided there), FAILURE fails the call."""

    def __init__(self, *, cfg: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cfg = cfg

    def _options(self) -> tuple[str, dict[str, Any]]:
        """(kernel, boot options) from the test's configuration file, if it has one."""
        if self.cfg is None:
            return str(self.path), {}
        from miniguest.toolstack.xlcfg import ConfigError, parse_xl_config
        try:
            cfg = parse_xl_config(str(self.cfg))
        except ConfigError as e:
            raise XtfError(f"XTF configuration: {e}") from None
        kernel = cfg.kernel if os.path.isfile(cfg.kernel) else str(self.path)
        options: dict[str, Any] = {"memory_mib": cfg.memory, "cmdline": cfg.cmdline}
        if cfg.name:
            options["name"] = cfg.name
        if cfg.maxmem is not None:
            options["maxmem"] = cfg.maxmem
        if cfg.vcpus != 1:
            import warnings
            warnings.warn_explicit(f"{self.cfg.name}: vcpus={cfg.vcpus}: miniguest runs one vCPU per domain for "
                                   "now; booting with vcpus=1", pytest.PytestWarning, str(self.cfg), 1)
        return kernel, options

    def setup(self) -> None:
        kernel, options = self._options()
        # A budget: an XTF test that never reports (a hang, a test like `splitlock` that is a load generator)
        # must not stall the whole session.
        self.run = boot(kernel, max_instructions=self.config.getoption("xtf_budget"), **options)
        res = self.run.xtf_result
        if res in ("SKIP", "ERROR", "CRASH"):
            xtf_outcome(self.run)

    def runtest(self) -> None:
        xtf_outcome(self.run)

    def teardown(self) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            run.close()

    def reportinfo(self) -> tuple[Any, Optional[int], str]:
        return self.path, None, f"xtf: {self.name}" + (f" ({self.cfg.name})" if self.cfg is not None else "")
