"""Per-domain limits, with C xenstored's defaults (tools/xenstored/domain.c `hard_quotas`).

Quotas apply to unprivileged domains only; dom0 (its ring or the Unix socket) bypasses them, as in C xenstored.
The exceptions are the path length (Xen 4.17's xenstored checks it for every caller, and so do we) and the bounds
on queued output (`outstanding_privileged`, `memory`), which are flow control rather than quotas: a client that
does not read what we send it is not read from, whoever it is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from miniguest.abi.xs_wire import XENSTORE_REL_PATH_MAX
from miniguest.hypervisor.save import Fields


@dataclass
class Quotas:
    #: nodes a domain may own (new node beyond -> ENOSPC)
    nodes: int = 1000
    #: watches per connection (one more -> E2BIG, C xenstored's choice)
    watches: int = 128
    #: requests whose reply the guest has not consumed yet; at the limit we stop reading its ring (no errno)
    outstanding: int = 20
    #: the same for privileged clients (dom0: the Unix socket, a dom0 ring): flow control only, oxenstored's
    #: maxoutstanding; C xenstored has no bound there, which let a socket client that never reads grow us
    outstanding_privileged: int = 1024
    #: bytes of queued replies and watch events per connection, for every client: at the limit we stop reading
    #: its requests; watch events beyond it are dropped (a privileged socket client is disconnected instead)
    memory: int = 2 * 1024 * 1024 + 512 * 1024
    #: open transactions per connection (one more -> ENOSPC)
    transactions: int = 10
    #: distinct nodes one transaction may touch (one more -> ENOSPC)
    transaction_nodes: int = 1024
    #: entries in one permission list (more -> ENOSPC)
    node_permissions: int = 5
    #: path length not counting a leading /local/domain/<id>/ (longer -> EINVAL)
    path_max: int = XENSTORE_REL_PATH_MAX
    #: node size: 16-byte header + 8 bytes per permission + value + child names with NULs (larger -> ENOSPC)
    node_size: int = 2048

    def save(self) -> dict:
        return asdict(self)

    def restore(self, f: Fields) -> None:
        for field in fields(self):
            setattr(self, field.name, f.int(field.name, 0, 1 << 40))
