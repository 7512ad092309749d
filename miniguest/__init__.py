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
    # `miniguest.Domain` is the toolstack's domain (toolstack.libxl.Guest: the hypervisor's Domain with its dom0
    # daemons). Imported on first use: the package root sits above every layer, and importing a lower layer
    # (miniguest.abi, miniguest.hypervisor) runs this file first, so it must not import the toolstack eagerly.
    if name == "Domain":
        from miniguest.toolstack.libxl import Guest
        return Guest
    raise AttributeError(name)
