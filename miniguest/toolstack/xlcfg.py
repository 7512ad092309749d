"""Reading xl.cfg-style domain configuration files (the subset miniguest uses).

Lines are `key = value` with Python-like literals: "strings" or 'strings', integers, [lists]. Comments start
with '#'. Known keys: kernel, memory, maxmem, name, cmdline, extra, root, ramdisk, on_poweroff, on_reboot,
on_crash, on_watchdog. A relative kernel or ramdisk path is relative to the file's directory.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from typing import Optional

ACTIONS = ("destroy", "restart", "preserve", "rename-restart", "coredump-destroy", "coredump-restart",
           "soft-reset")


class ConfigError(Exception):
    pass


@dataclass
class XlConfig:
    kernel: str
    memory: int = 32
    maxmem: Optional[int] = None
    name: Optional[str] = None
    cmdline: str = ""
    ramdisk: Optional[str] = None
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    on_watchdog: str = "destroy"
    other: dict[str, object] = field(default_factory=dict)


def parse_xl_config(path: str) -> XlConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    values: dict[str, object] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith(("'", '"')) else raw.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected key = value")
        key = key.strip()
        try:
            values[key] = ast.literal_eval(value.strip().rstrip(";"))
        except (ValueError, SyntaxError):
            raise ConfigError(f"{path}:{lineno}: cannot parse the value of {key!r}") from None
    if "kernel" not in values or not isinstance(values["kernel"], str):
        raise ConfigError(f"{path}: no kernel= line")
    base = os.path.dirname(os.path.abspath(path))

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base, p)

    cfg = XlConfig(kernel=rel(values.pop("kernel")))  # type: ignore[arg-type]
    if "memory" in values:
        try:
            cfg.memory = int(values.pop("memory"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: memory must be a number of MiB") from None
    if "maxmem" in values:
        try:
            cfg.maxmem = int(values.pop("maxmem"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: maxmem must be a number of MiB") from None
    if "name" in values:
        cfg.name = str(values.pop("name"))
    parts = [str(values.pop(k)) for k in ("root", "extra", "cmdline") if k in values]
    cfg.cmdline = " ".join(p for p in parts if p)
    if "ramdisk" in values:
        cfg.ramdisk = rel(str(values.pop("ramdisk")))
    for key in ("on_poweroff", "on_reboot", "on_crash", "on_watchdog"):
        if key in values:
            action = str(values.pop(key))
            if action not in ACTIONS:
                raise ConfigError(f"{path}: {key}={action!r} is not one of {', '.join(ACTIONS)}")
            setattr(cfg, key, action)
    cfg.other = values
    return cfg
