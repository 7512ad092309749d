"""Top-level test configuration.

- The pytester plugin, for tests that run pytest on a small test file (tests/regress/test_plugin.py
  exercises miniguest's own pytest plugin that way).
- The page-type audit that runs after every test on every domain the test created or used.
- Markers (declared in pyproject.toml): `slow` marks tests that take seconds of CPU -- guest rebuilds, real
  gdb sessions, fuzzing, long boots, property tests. `python3 -m pytest -q -n auto -m "not slow"` is the
  quick subset (under a minute); the README's command runs everything.
- Parallel runs (pytest-xdist, `-n auto`): every test must be independent of the others and of the order
  they run in. Put files under `tmp_path` (never in the repository or a fixed /tmp name), sockets there too,
  listen on port 0 and read the port back, build domains in the test (each has its own Host); wait for the
  state you need (guestlib.wait_until, guestlib.read_until) instead of sleeping for a fixed time.
"""
from __future__ import annotations

import signal

import pytest

from miniguest.hypervisor.domain import Domain
from miniguest.hypervisor.host import Host
from miniguest.hypervisor.x86.page_types import audit_domain

pytest_plugins = ["pytester"]

# The domains the running test created, in order, and those whose snapshot restore failed: they are closed
# and never handed out, half-restored by design. A test that creates many (a Hypothesis test builds one per
# example) has the older ones audited as they drop out of a short window, so memory stays bounded.
_CREATED: list[Domain] = []
_FAILED_RESTORE: list[Domain] = []
_EARLY_PROBLEMS: list[str] = []
_KEEP = 8
_original_create_domain = Host.create_domain
_original_restore = Domain.restore


def _problems(domain: Domain) -> list[str]:
    if any(domain is f for f in _FAILED_RESTORE):
        return []
    return [f"d{domain.domid} {domain.name!r}: {p}" for p in audit_domain(domain)[:5]]


def _recording_create_domain(self: Host, *args, **kwargs) -> Domain:
    domain = _original_create_domain(self, *args, **kwargs)
    _CREATED.append(domain)
    if len(_CREATED) > _KEEP:
        _EARLY_PROBLEMS.extend(_problems(_CREATED.pop(0)))
    return domain


def _recording_restore(self: Domain, *args, **kwargs) -> None:
    try:
        _original_restore(self, *args, **kwargs)
    except BaseException:
        _FAILED_RESTORE.append(self)
        raise


def pytest_configure(config: pytest.Config) -> None:
    # A pytest started in the background by a non-interactive shell (`pytest &` in a script) inherits SIGINT
    # ignored, as POSIX asks of such jobs, and so would every miniguest it starts: the Ctrl-C tests need the
    # disposition a terminal gives.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line("markers", "no_page_type_audit(reason): the test leaves a domain half-built on "
                                       "purpose; skip the page-type audit after it")
    Host.create_domain = _recording_create_domain    # type: ignore[method-assign]
    Domain.restore = _recording_restore              # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    Host.create_domain = _original_create_domain     # type: ignore[method-assign]
    Domain.restore = _original_restore               # type: ignore[method-assign]


def _domains_in(value: object, depth: int = 0) -> list[Domain]:
    if isinstance(value, Domain):
        return [value]
    if depth < 2 and isinstance(value, (tuple, list)):
        return [d for v in value for d in _domains_in(v, depth + 1)]
    return []


@pytest.fixture(autouse=True)
def page_type_audit(request: pytest.FixtureRequest):
    """Xen's page-type invariants hold on every domain the test created or was handed by a fixture: the
    type counts recount, and nothing the guest can reach maps a page table or a Xen frame writable or a
    frame the domain neither owns nor has mapped by grant (page_types.audit_domain)."""
    yield
    domains = list(_CREATED)
    early = list(_EARLY_PROBLEMS)
    if not request.node.get_closest_marker("no_page_type_audit"):
        for value in getattr(request.node, "funcargs", {}).values():
            domains += [d for d in _domains_in(value) if not any(d is e for e in domains)]
        problems = early + [p for d in domains for p in _problems(d)]
    else:
        problems = []
    _CREATED.clear()                                  # the audit keeps no domain alive past its test
    _FAILED_RESTORE.clear()
    _EARLY_PROBLEMS.clear()
    assert not problems, "page-type audit:\n" + "\n".join(problems[:20])
