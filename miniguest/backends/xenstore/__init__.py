"""miniguest's xenstored: a XenStore daemon in pure Python (store, wire protocol, rings, Unix socket).

Public API: XenstoreDaemon (introduce_domain / release_domain / listen_unix / close / dom0), Dom0Store,
populate_domain, Quotas, Perm, XenstoreError, RingConnection (on_event).
"""
from __future__ import annotations

from .daemon import XenstoreDaemon
from .dom0 import Dom0Store, Dom0Transaction
from .errors import XenstoreError
from .perms import Perm
from .populate import populate_domain
from .quotas import Quotas
from .ring import RingConnection

__all__ = ["XenstoreDaemon", "Dom0Store", "Dom0Transaction", "XenstoreError", "Perm", "populate_domain",
           "Quotas", "RingConnection"]
