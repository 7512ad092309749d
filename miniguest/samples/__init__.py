"""The sample guests shipped with miniguest (built from firmware/ by gcc and GNU ld)."""
from __future__ import annotations

import os
from typing import Optional

SAMPLES: dict[str, str] = {
    "hello": "prints through console_io and the console ring, checks a few hypercalls, powers off",
    "minios": "boots like upstream Mini-OS (page tables, events, timer, console ring, grant table, threads, "
              "xenbus self-test, memory/target and control/shutdown watches), prints T(s= us=) every second; "
              "cmdline ticks=N (0: forever)",
    "faults": "raises every exception class, int N, privileged instructions, event masking and timers, checks "
              "what Xen delivers; cmdline crash-in-pf ends with a fault in the #PF handler",
}
DEFAULT = "hello"


def path(name: str) -> Optional[str]:
    if name not in SAMPLES:
        return None
    p = os.path.join(os.path.dirname(__file__), f"{name}.elf")
    return p if os.path.exists(p) else None
