"""miniguest: a Xen hypervisor in Python for x86_64 paravirtual guests, on Unicorn.

    from miniguest import Domain
    dom = Domain.from_elf("hello.elf", memory_mib=32)
    dom.run()
    print(dom.console.text, dom.shutdown_reason)
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Domain", "__version__"]


def __getattr__(name: str):
    # Lazy, so that importing the abi/ or backends/ packages does not pull in Unicorn.
    if name == "Domain":
        from miniguest.hypervisor.domain import Domain
        return Domain
    raise AttributeError(name)
