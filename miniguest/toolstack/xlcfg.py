"""Reading xl.cfg-style domain configuration files (the subset miniguest uses).

Lines are `key = value` with Python-like literals: "strings" or 'strings', integers, [lists]. Comments start
with '#'. Known keys: kernel, memory, maxmem, vcpus, name, cmdline, extra, root, ramdisk, on_poweroff,
on_reboot, on_crash, on_watchdog, disk (xl-disk-configuration(5) strings). A relative kernel or ramdisk path
is relative to the file's directory; a disk target that does not start with '/' gets /dev/ prepended, as xl
does.
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
    vcpus: int = 1                  # what the file asks for; miniguest runs one vCPU for now (callers warn)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    on_watchdog: str = "destroy"
    disks: list[str] = field(default_factory=list)
    other: dict[str, object] = field(default_factory=dict)


#: larger than any domain configuration; a bigger "config" (a device, a huge file) is refused unread
MAX_CONFIG = 1 << 20


def _mib(path: str, key: str, value: object) -> int:
    """An integer number of MiB: an integer, or a string of decimal digits as xl also accepts."""
    if isinstance(value, str) and value.strip().isdigit() and len(value) < 20:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise ConfigError(f"{path}: {key} must be a number of MiB")
    return value


def _text(path: str, key: str, value: object) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError(f"{path}: {key} must be a string")
    text = str(value)
    if "\0" in text:
        raise ConfigError(f"{path}: {key} contains a NUL character")
    return text


def parse_xl_config(path: str) -> XlConfig:
    """Read an xl.cfg-style file; ConfigError with a one-line reason for anything wrong with it."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG + 1)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except ValueError:                          # a NUL byte in the path
        raise ConfigError(f"{path!r}: not a valid path") from None
    if len(raw) > MAX_CONFIG:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG} bytes: not a domain configuration")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x})") from None
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
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            # (TypeError: an unhashable dict key or set item; RecursionError/MemoryError: absurd nesting)
            raise ConfigError(f"{path}:{lineno}: cannot parse the value of {key[:64]!r}") from None
    if "kernel" not in values or not isinstance(values["kernel"], str):
        raise ConfigError(f"{path}: no kernel= line")
    _text(path, "kernel", values["kernel"])
    base = os.path.dirname(os.path.abspath(path))

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base, p)

    cfg = XlConfig(kernel=rel(values.pop("kernel")))  # type: ignore[arg-type]
    if "memory" in values:
        cfg.memory = _mib(path, "memory", values.pop("memory"))
    if "maxmem" in values:
        cfg.maxmem = _mib(path, "maxmem", values.pop("maxmem"))
    if "vcpus" in values:
        vcpus = values.pop("vcpus")
        if isinstance(vcpus, str) and vcpus.strip().isdigit() and len(vcpus) < 6:
            vcpus = int(vcpus)
        if not isinstance(vcpus, int) or isinstance(vcpus, bool) or not 1 <= vcpus <= 4096:
            raise ConfigError(f"{path}: vcpus must be a number of vCPUs (1 or more)")
        cfg.vcpus = vcpus
    if "name" in values:
        cfg.name = _text(path, "name", values.pop("name"))
    parts = [_text(path, k, values.pop(k)) for k in ("root", "extra", "cmdline") if k in values]
    cfg.cmdline = " ".join(p for p in parts if p)
    if "ramdisk" in values:
        cfg.ramdisk = rel(_text(path, "ramdisk", values.pop("ramdisk")))
    for key in ("on_poweroff", "on_reboot", "on_crash", "on_watchdog"):
        if key in values:
            action = values.pop(key)
            if action not in ACTIONS:
                raise ConfigError(f"{path}: {key}={str(action)[:64]!r} is not one of {', '.join(ACTIONS)}")
            setattr(cfg, key, action)
    if "disk" in values:
        disks = values.pop("disk")
        if isinstance(disks, str):
            disks = [disks]
        if not isinstance(disks, list) or not all(isinstance(d, str) for d in disks):
            raise ConfigError(f"{path}: disk must be a list of disk specification strings")
        cfg.disks = [_text(path, "disk", d) for d in disks]
    cfg.other = values
    return cfg
