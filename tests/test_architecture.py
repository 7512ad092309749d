"""The architecture of docs/DESIGN.md, checked: imports point down the layers and, above the hypervisor, only
at its public interface (import-linter, contracts in pyproject.toml); no module imports inside functions;
no module-level state that code mutates; no module touching another class's private attributes."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "miniguest")

# Imports inside functions that are allowed, and why.
DEFERRED_IMPORTS = {
    # The package root sits above every layer but runs first whenever any layer is imported, so it can
    # only name the toolstack's Domain on first use (PEP 562 __getattr__).
    "miniguest/__init__.py": "the package root: miniguest.Domain on first use",
    # The pytest11 entry point is loaded into every pytest session of every project on a machine where
    # miniguest is installed: it must not pull in Unicorn and the hypervisor until a test uses it.
    "miniguest/regress/pytest_plugin.py": "a pytest plugin loaded into every pytest session",
}
# Module-level names that code mutates, and why.
MUTABLE_GLOBALS = {
    # A signal handler is process-wide: the domains running on the main thread, which a Ctrl-C asks to stop.
    ("miniguest/hypervisor/domain.py", "_sigint_domains"): "the SIGINT handler's domains (process-wide)",
}
# Private attributes of other code a module may touch, and why.
FOREIGN_PRIVATES = {
    # Unicorn's Python binding offers no public way to add a raw ctypes hook or to reach its handle; the
    # fast paths (one C call per hypercall, the compiled clock) need both.
    ("miniguest/hypervisor/unicorn_x86.py", "_callbacks"): "Unicorn binding: keep a raw hook's callback alive",
    ("miniguest/hypervisor/unicorn_x86.py", "_hook_exception"): "Unicorn binding: its hook-exception convention",
    ("miniguest/hypervisor/vclock.py", "_uch"): "Unicorn binding: the engine handle for uc_hook_add",
}
MUTATING_METHODS = frozenset({"append", "extend", "insert", "add", "update", "setdefault", "pop", "popitem",
                              "clear", "remove", "discard", "appendleft", "popleft", "__setitem__"})


def modules() -> Iterator[tuple[str, ast.Module]]:
    for dirpath, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, ROOT), ast.parse(f.read(), path)


def test_import_contracts_hold():
    """import-linter with the contracts of pyproject.toml: a backwards import fails here."""
    pytest.importorskip("importlinter")
    r = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
                        "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_interface_contract_names_every_private_hypervisor_module():
    """A new module in hypervisor/ is private unless it is added to the public interface on purpose."""
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    forbidden = next(c for c in contracts if c["type"] == "forbidden")["forbidden_modules"]
    public = {"host", "save", "intercept", "debugger"}
    hv = os.path.join(PACKAGE, "hypervisor")
    names = {os.path.splitext(n)[0] for n in os.listdir(hv)
             if (n.endswith(".py") and n != "__init__.py") or os.path.isfile(os.path.join(hv, n, "__init__.py"))}
    assert {f"miniguest.hypervisor.{n}" for n in names - public} == set(forbidden)


def test_no_imports_inside_functions():
    found = []
    for path, tree in modules():
        if path in DEFERRED_IMPORTS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{path}:{n.lineno}" for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not found, "imports inside functions (move them to the top, or break the cycle): " + ", ".join(found)


def _module_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _locals(fn: ast.AST) -> set[str]:
    args = fn.args  # type: ignore[attr-defined]
    names = {a.arg for a in args.args + args.kwonlyargs + args.posonlyargs}
    names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    names |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


def test_no_mutable_module_globals():
    """State lives in objects: no `global`, and no function changes a container bound at module level."""
    found = []
    for path, tree in modules():
        module_names = _module_names(tree)
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            local = _locals(fn)
            for node in ast.walk(fn):
                name = None
                if isinstance(node, ast.Global):
                    found += [f"{path}:{node.lineno}: global {n}" for n in node.names
                              if (path, n) not in MUTABLE_GLOBALS]
                    continue
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in MUTATING_METHODS and isinstance(node.func.value, ast.Name)):
                    name = node.func.value.id
                elif isinstance(node, (ast.Assign, ast.Delete, ast.AugAssign)):
                    targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                    for t in targets:
                        if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                            name = t.value.id
                if name and name in module_names and name not in local and (path, name) not in MUTABLE_GLOBALS:
                    found.append(f"{path}:{node.lineno}: {name}")
    assert not found, "module-level state changed by code (keep it in an object): " + ", ".join(found)


def _own_privates(tree: ast.Module) -> set[str]:
    """Private names this module defines: attributes it sets on self/cls, class-level names, functions and
    classes, module-level names."""
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")):
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_")}


def test_no_module_touches_another_class_private_state():
    """`obj._x` where obj is not self/cls and `_x` is not this module's own: another class's private state."""
    found = []
    for path, tree in modules():
        own = _own_privates(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in own or (path, node.attr) in FOREIGN_PRIVATES:
                continue
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "private state of another module's class: " + ", ".join(found)


@pytest.mark.parametrize("snippet,check", [
    ("def f():\n    import os\n", test_no_imports_inside_functions),
    ("X = []\ndef f():\n    X.append(1)\n", test_no_mutable_module_globals),
    ("def f(conn):\n    return conn._next_tx_id\n", test_no_module_touches_another_class_private_state),
])
def test_the_checks_catch_what_they_forbid(snippet, check, monkeypatch):
    """Each lint fails on a module that breaks its rule (a check that cannot fail is no check)."""
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: iter([("miniguest/x.py", ast.parse(snippet))]))
    with pytest.raises(AssertionError):
        check()
