"""Helpers for the regression-testing tests: boot a guest with a tracer, stop it after N hypercalls."""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from guestlib import HELLO, ROOT, SELFTEST  # noqa: E402

from miniguest import Domain, samples  # noqa: E402
from miniguest.debug.tracer import Tracer  # noqa: E402
from miniguest.regress.snapshot import PauseAfterHypercalls  # noqa: E402

MINIOS: Optional[str] = samples.path("minios")
GOLDEN = os.path.join(ROOT, "tests", "golden")


# A hypercall observer that pauses the domain right after its n-th hypercall (a defined stop point).
PauseAfter = PauseAfterHypercalls


def traced(path: str, **options: Any) -> tuple[Domain, Tracer]:
    dom = Domain.from_elf(path, **options)
    return dom, Tracer(dom).attach()


def trace_run(path: str, **options: Any) -> tuple[Domain, list]:
    dom, tracer = traced(path, **options)
    dom.run()
    return dom, tracer.records


def lines(records: list) -> list[str]:
    return [r.to_json() for r in records]
