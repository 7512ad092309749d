"""The XenStore database: nodes, permissions, generation counts, quotas and transactions.

Layout follows C xenstored: a flat map from canonical path to node, every node carrying its value, its
permission list, its children's names (in creation order) and a generation count. One global counter is bumped
on every modification; a node records the value it had when last modified. That is what makes optimistic
transactions cheap: a transaction remembers the generation of every node it touched (None = absent) and its
private copies of them; commit succeeds only if all those generations are unchanged, then installs the copies.

Watches are not handled here. A change reports itself through `Store.fire(path, exact, node, old_perms)`;
inside a transaction the report is recorded and replayed on commit, so watchers see nothing until then.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from miniguest.abi import errno as E
from miniguest.hypervisor.save import Fields, StateError, latin1, unlatin1

from .errors import XenstoreError
from .paths import SPECIAL_INTRODUCE, SPECIAL_RELEASE, basename, child_path, parent_of
from .perms import PERM_OWNER, PERM_READ, PERM_WRITE, Caller, Perm, perm_for
from .quotas import Quotas

#: bytes C xenstored charges per node for its header and per permission entry (node-size quota)
NODE_HEADER_SIZE = 16
PERM_ENTRY_SIZE = 8

FireFn = Callable[[str, bool, Optional["Node"], Optional[tuple[Perm, ...]]], None]


@dataclass
class Node:
    """One node. Never mutate a node reachable from `Store.nodes`: copy it (`clone`) and install the copy."""

    value: bytes
    perms: tuple[Perm, ...]
    children: list[str] = field(default_factory=list)
    generation: int = 0

    @property
    def owner(self) -> int:
        return self.perms[0].domid

    def clone(self) -> "Node":
        return Node(self.value, self.perms, list(self.children), self.generation)

    def children_bytes(self) -> bytes:
        return b"".join(c.encode("ascii") + b"\0" for c in self.children)

    def size(self) -> int:
        """Size as the node-size quota counts it."""
        childlen = sum(len(c) + 1 for c in self.children)
        return NODE_HEADER_SIZE + PERM_ENTRY_SIZE * len(self.perms) + len(self.value) + childlen

    # -- saved state (hypervisor/save.py) -----------------------------------------------------------------
    def save(self) -> dict:
        return {"value": latin1(self.value), "perms": [str(p) for p in self.perms], "children": list(self.children),
                "generation": self.generation}

    @classmethod
    def from_saved(cls, data: object, where: str) -> "Node":
        f = Fields(data, where)
        children = f.list("children")
        if not all(isinstance(c, str) for c in children):
            raise StateError(f"{where}.children must be strings")
        return cls(unlatin1(f.str("value"), f"{where}.value"), saved_perms(f.list("perms"), f"{where}.perms"),
                   list(children), f.int("generation"))


def saved_perms(items: object, where: str) -> tuple[Perm, ...]:
    """A permission list as saved (["n0", "r1", ...])."""
    if not isinstance(items, list) or not items:
        raise StateError(f"{where} must be a non-empty permission list")
    try:
        return tuple(Perm.parse(p) for p in items)
    except (XenstoreError, TypeError):
        raise StateError(f"{where} holds a malformed permission") from None


@dataclass
class _Access:
    """What a transaction knows about one path: generation at first touch and its private view."""

    generation: Optional[int]
    node: Optional[Node]
    old_perms: Optional[tuple[Perm, ...]]
    modified: bool = False
    #: None = no watch to fire at commit; True = exact only; False = node and ancestors
    fire_exact: Optional[bool] = None

    def save(self) -> dict:
        return {"generation": self.generation, "node": self.node.save() if self.node is not None else None,
                "old_perms": [str(p) for p in self.old_perms] if self.old_perms is not None else None,
                "modified": self.modified, "fire_exact": self.fire_exact}

    @classmethod
    def from_saved(cls, data: object, where: str) -> "_Access":
        a = Fields(data, where)
        node = a.obj.get("node")
        old = a.obj.get("old_perms")
        fire = a.obj.get("fire_exact")
        if fire is not None and not isinstance(fire, bool):
            raise StateError(f"{where}.fire_exact must be true, false or null")
        return cls(a.int("generation", optional=True),
                   Node.from_saved(node, where + ".node") if node is not None else None,
                   saved_perms(old, where + ".old_perms") if old is not None else None, a.bool("modified"), fire)


class Transaction:
    """An open transaction of one connection (ids are per connection; the daemon numbers them)."""

    def __init__(self, tx_id: int, caller: Caller) -> None:
        self.id = tx_id
        self.caller = caller
        self.accessed: dict[str, _Access] = {}

    def save(self) -> list:
        return [self.id, [[name, acc.save()] for name, acc in self.accessed.items()]]

    @classmethod
    def from_saved(cls, data: object, caller: Caller, where: str) -> "Transaction":
        if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], int) and isinstance(data[1], list)):
            raise StateError(f"{where} must be [id, accessed]")
        tx = cls(data[0], caller)
        for j, item in enumerate(data[1]):
            at = f"{where}[{j}]"
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise StateError(f"{at} must be [path, access]")
            tx.accessed[item[0]] = _Access.from_saved(item[1], at)
        return tx


class Store:
    """The tree plus per-domain node accounting. All checks that need the caller take a `Caller`."""

    def __init__(self, quotas: Optional[Quotas] = None) -> None:
        self.quotas = quotas or Quotas()
        self.nodes: dict[str, Node] = {}
        self.generation = 0
        self.node_counts: dict[int, int] = {}
        self.fire: FireFn = lambda path, exact, node, old_perms: None
        #: whether a domain exists (the daemon's: dom0 and the introduced domains); a bare Store knows none
        #: is missing
        self.domain_exists: Callable[[int], bool] = lambda domid: True
        root_perms = (Perm("n", 0),)
        # C xenstored's initial tree: / -> tool -> xenstored, plus the two special nodes.
        for name, children in (("/", ["tool"]), ("/tool", ["xenstored"]), ("/tool/xenstored", []),
                               (SPECIAL_RELEASE, []), (SPECIAL_INTRODUCE, [])):
            self._install(name, Node(b"", root_perms, list(children), self._next_generation()))

    # -- primitives ------------------------------------------------------------------------------------
    def _next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def _install(self, name: str, node: Optional[Node]) -> None:
        """Replace (or with None delete) the global node, keeping node_counts exact by owner diff."""
        old = self.nodes.get(name)
        if old is not None:
            self.node_counts[old.owner] = self.node_counts.get(old.owner, 0) - 1
        if node is None:
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = node
            self.node_counts[node.owner] = self.node_counts.get(node.owner, 0) + 1

    def _get(self, name: str, tx: Optional[Transaction], caller: Optional[Caller] = None) -> Optional[Node]:
        """The node as `tx` sees it (recording the first touch), or the global node."""
        if tx is None:
            return self.nodes.get(name)
        acc = tx.accessed.get(name)
        if acc is None:
            if (caller is not None and not caller.privileged
                    and len(tx.accessed) >= self.quotas.transaction_nodes):
                raise XenstoreError(E.ENOSPC, "too many nodes touched in transaction")
            node = self.nodes.get(name)
            acc = _Access(node.generation if node else None, node.clone() if node else None,
                          node.perms if node else None)
            tx.accessed[name] = acc
        return acc.node

    def _put(self, name: str, node: Optional[Node], tx: Optional[Transaction]) -> None:
        """Store a modified node (or a deletion) globally or in the transaction's view."""
        if node is not None:
            node.generation = self._next_generation()
        if tx is None:
            self._install(name, node)
        else:
            acc = tx.accessed[name]
            acc.node = node
            acc.modified = True

    def _fire(self, name: str, exact: bool, node: Optional[Node], tx: Optional[Transaction],
              old_perms: Optional[tuple[Perm, ...]] = None) -> None:
        if tx is None:
            self.fire(name, exact, node, old_perms)
            return
        acc = tx.accessed[name]
        if acc.fire_exact is None:
            acc.fire_exact = exact
        elif not exact:
            acc.fire_exact = False

    # -- permission helpers ----------------------------------------------------------------------------
    def _errno_from_parents(self, caller: Caller, name: str, err: int, want: int,
                            tx: Optional[Transaction]) -> int:
        """Hide whether a node exists from a caller who may not see its nearest existing ancestor."""
        cur = name
        while cur != "/":
            cur = parent_of(cur)
            node = self._get(cur, tx, caller)
            if node is not None:
                return err if perm_for(caller, node.perms) & want else E.EACCES
        return E.EACCES

    def _lookup(self, caller: Caller, name: str, want: int, tx: Optional[Transaction]) -> Node:
        """The node if it exists and `caller` has `want` on it; else ENOENT or EACCES as xenstored picks."""
        node = self._get(name, tx, caller)
        if node is not None and (perm_for(caller, node.perms) & want) == want:
            return node
        err = E.ENOENT if node is None else E.EACCES
        raise XenstoreError(self._errno_from_parents(caller, name, err, want, tx))

    def _check_size(self, caller: Caller, node: Node) -> None:
        if not caller.privileged and node.size() > self.quotas.node_size:
            raise XenstoreError(E.ENOSPC, "node too large")

    def owned_count(self, domid: int, tx: Optional[Transaction]) -> int:
        """Nodes `domid` owns, as `tx` would leave them."""
        count = self.node_counts.get(domid, 0)
        if tx is not None:
            for name, acc in tx.accessed.items():
                if not acc.modified:
                    continue
                old = self.nodes.get(name)
                count -= old is not None and old.owner == domid
                count += acc.node is not None and acc.node.owner == domid
        return count

    # -- operations --------------------------------------------------------------------------------------
    def read(self, caller: Caller, name: str, tx: Optional[Transaction] = None) -> bytes:
        return self._lookup(caller, name, PERM_READ, tx).value

    def get_node(self, caller: Caller, name: str, tx: Optional[Transaction] = None) -> Node:
        """The node after a READ permission check (for DIRECTORY, DIRECTORY_PART, GET_PERMS)."""
        return self._lookup(caller, name, PERM_READ, tx)

    def exists(self, name: str) -> bool:
        return name in self.nodes

    def write(self, caller: Caller, name: str, value: bytes, tx: Optional[Transaction] = None) -> None:
        try:
            node = self._lookup(caller, name, PERM_WRITE, tx)
        except XenstoreError as err:
            if err.errno != E.ENOENT:
                raise
            self._create(caller, name, bytes(value), tx)
            return
        new = node.clone()
        new.value = bytes(value)
        self._check_size(caller, new)
        self._put(name, new, tx)
        self._fire(name, False, new, tx)

    def mkdir(self, caller: Caller, name: str, tx: Optional[Transaction] = None) -> None:
        try:
            self._lookup(caller, name, PERM_WRITE, tx)
        except XenstoreError as err:
            if err.errno != E.ENOENT:
                raise
            self._create(caller, name, b"", tx)

    def _create(self, caller: Caller, name: str, value: bytes, tx: Optional[Transaction]) -> None:
        """Create `name` and any missing ancestors; each inherits its parent's permissions and an
        unprivileged creator becomes the owner. All quota checks happen before anything is stored."""
        missing = [name]
        cur = name
        while True:
            cur = parent_of(cur)
            parent = self._get(cur, tx, caller)
            if parent is not None:
                break
            if cur == "/":  # cannot happen: the root always exists
                raise XenstoreError(E.EIO, "root missing")
            missing.append(cur)
        if not caller.privileged and self.owned_count(caller.domid, tx) + len(missing) > self.quotas.nodes:
            raise XenstoreError(E.ENOSPC, "node quota exceeded")
        top_parent_name = cur
        new_parent = parent.clone()
        new_parent.children.append(basename(missing[-1]))
        self._check_size(caller, new_parent)
        created: list[tuple[str, Node]] = []
        perms = parent.perms
        for i, path in enumerate(reversed(missing)):
            if not caller.privileged:
                perms = (Perm(perms[0].kind, caller.domid),) + perms[1:]
            node = Node(value if path == name else b"", perms)
            if i + 1 < len(missing):
                node.children.append(basename(missing[-2 - i]))
            self._check_size(caller, node)
            created.append((path, node))
        # Nothing failed (every path was touched above, so a transaction recorded it as absent):
        # make the changes, parent first so the tree stays connected.
        self._put(top_parent_name, new_parent, tx)
        for path, node in created:
            self._put(path, node, tx)
        self._fire(name, False, created[-1][1], tx)

    def rm(self, caller: Caller, name: str, tx: Optional[Transaction] = None) -> None:
        try:
            node = self._lookup(caller, name, PERM_WRITE, tx)
        except XenstoreError as err:
            if err.errno != E.ENOENT:
                raise
            if self._get(parent_of(name), tx, caller) is not None:
                return
            raise
        if name == "/" or name.startswith("@"):
            raise XenstoreError(E.EINVAL, "cannot remove this node")
        parent_name = parent_of(name)
        parent = self._get(parent_name, tx, caller)
        if parent is None:  # a node without parent would be a corrupt store
            raise XenstoreError(E.EIO, "parent missing")
        # Collect the subtree iteratively (no recursion: a deep tree must not exhaust the Python stack).
        order: list[tuple[str, Node]] = []
        stack = [(name, node)]
        while stack:
            path, cur = stack.pop()
            order.append((path, cur))
            for child in cur.children:
                cpath = child_path(path, child)
                cnode = self._get(cpath, tx, caller)
                if cnode is not None:
                    stack.append((cpath, cnode))
        # Fire before deleting (watchers are checked against the node's permissions), deepest first.
        for path, cur in reversed(order):
            self._put(path, None, tx)
            self._fire(path, path != name, cur, tx)
        new_parent = parent.clone()
        try:
            new_parent.children.remove(basename(name))
        except ValueError:
            pass
        self._put(parent_name, new_parent, tx)

    def set_perms(self, caller: Caller, name: str, perms: tuple[Perm, ...],
                  tx: Optional[Transaction] = None) -> None:
        if not caller.privileged and len(perms) > self.quotas.node_permissions:
            raise XenstoreError(E.ENOSPC, "too many permissions")
        # C xenstored (do_set_perms after domain_alloc_permrefs): an owner that is no domain is ENOENT,
        # before the node is even looked up -- a node must not belong to a domain that a later domain with
        # that id would inherit it from (nor pass such an owner on to the children created under it).
        if not self.domain_exists(perms[0].domid):
            raise XenstoreError(E.ENOENT, f"owner domain {perms[0].domid} does not exist")
        node = self._lookup(caller, name, PERM_WRITE | PERM_OWNER, tx)
        if not caller.privileged and perms[0].domid != node.owner:
            raise XenstoreError(E.EPERM, "only dom0 may change a node's owner")
        new = node.clone()
        new.perms = tuple(perms)
        self._check_size(caller, new)
        self._put(name, new, tx)
        self._fire(name, False, new, tx, node.perms)

    # -- transactions ----------------------------------------------------------------------------------
    def commit(self, tx: Transaction) -> None:
        """Install `tx` or raise EAGAIN if anything it touched changed meanwhile. Fires its watches."""
        for name, acc in tx.accessed.items():
            cur = self.nodes.get(name)
            if (cur.generation if cur is not None else None) != acc.generation:
                raise XenstoreError(E.EAGAIN)
        caller = tx.caller
        if not caller.privileged:
            gained = self.owned_count(caller.domid, tx)
            if gained > self.node_counts.get(caller.domid, 0) and gained > self.quotas.nodes:
                raise XenstoreError(E.ENOSPC, "node quota exceeded at commit")
        for name, acc in tx.accessed.items():
            if acc.modified:
                if acc.node is not None:
                    acc.node.generation = self._next_generation()
                self._install(name, acc.node)
        for name, acc in tx.accessed.items():
            if acc.fire_exact is not None:
                self.fire(name, acc.fire_exact, acc.node, acc.old_perms)

    # -- domain lifecycle ------------------------------------------------------------------------------
    def forget_domain(self, domid: int) -> None:
        """A domain is gone: delete the nodes it owns (XSA-419) and drop its permission entries from all
        other nodes (XSA-322), so a later domain reusing the id inherits nothing. Watches fire for removals."""
        owned = [n for n, node in self.nodes.items() if node.owner == domid and not n.startswith("@")]
        owned.sort(key=len)
        for name in owned:
            if name in self.nodes and name != "/":
                try:
                    self.rm(ROOT_CALLER, name)
                except XenstoreError:
                    pass
        for name, node in list(self.nodes.items()):
            if node.owner == domid:  # special nodes: hand them back to dom0
                new = node.clone()
                new.perms = (Perm(node.perms[0].kind, 0),) + node.perms[1:]
                self._put(name, new, None)
                node = new
            if any(p.domid == domid for p in node.perms[1:]):
                new = node.clone()
                new.perms = (node.perms[0],) + tuple(p for p in node.perms[1:] if p.domid != domid)
                self._put(name, new, None)

    # -- saved state (hypervisor/save.py) -----------------------------------------------------------------
    def save(self) -> dict:
        """The tree in the store's order and the generation counter (commits check against it)."""
        return {"generation": self.generation, "nodes": [[name, node.save()] for name, node in self.nodes.items()]}

    def restore(self, f: Fields) -> None:
        nodes, generation = self.parse_saved(f)
        self.install_saved(nodes, generation)

    @staticmethod
    def parse_saved(f: Fields) -> tuple[dict[str, Node], int]:
        """The nodes and generation counter of a save(), checked for form only."""
        nodes: dict[str, Node] = {}
        for i, item in enumerate(f.list("nodes", 1 << 22)):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise StateError(f"{f.where}.nodes[{i}] must be [path, node]")
            if item[0] in nodes:
                raise StateError(f"{f.where}.nodes[{i}]: {item[0][:80]!r} appears twice")
            nodes[item[0]] = Node.from_saved(item[1], f"{f.where}.nodes[{i}]")
        if "/" not in nodes:
            raise StateError(f"{f.where} has no root node")
        return nodes, f.int("generation")

    def install_saved(self, nodes: dict[str, Node], generation: int) -> None:
        self.nodes = dict(nodes)
        self.generation = max(generation, max((n.generation for n in nodes.values()), default=0))
        self.node_counts = {}
        for node in nodes.values():
            self.node_counts[node.owner] = self.node_counts.get(node.owner, 0) + 1


class _RootCaller:
    domid = 0
    privileged = True
    target: Optional[int] = None


ROOT_CALLER = _RootCaller()
