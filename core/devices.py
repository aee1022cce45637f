"""Finding backends (entry points) and choosing one for `--device`."""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from octavo.backend import ENTRY_POINT_GROUP, Availability, Backend, ConfigError, version_mismatch

# The devices whose backend packages live in this repository (backends/<name>): listed by
# `octavo devices` even when not installed, with how to install them.
KNOWN_DEVICES = ("cpu", "openvino", "cuda", "rocm", "tpu", "xpu", "neuron")


@dataclass(slots=True)
class DeviceInfo:
    name: str
    backend: type[Backend] | None
    availability: Availability


@functools.cache
def installed_backends() -> dict[str, type[Backend] | Exception]:
    """Every registered backend class, or the error that loading it raised."""
    found: dict[str, type[Backend] | Exception] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception as exc:  # a broken package must not hide the others
            found[ep.name] = exc
    return found


def _load_error(cls: type[Backend] | Exception) -> str | None:
    """Why a registered entry cannot be used at all (None: it loads and speaks this contract)."""
    if isinstance(cls, Exception):
        return f"failed to import: {cls!r}"
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        return f"the entry point names {cls!r}, not an octavo.backend.Backend subclass"
    return version_mismatch(getattr(cls, "contract_version", "unset"))


def loadable_backends() -> dict[str, type[Backend]]:
    """Installed backends that import and speak this contract (their options can be parsed)."""
    return {name: cls for name, cls in installed_backends().items() if _load_error(cls) is None}


def _availability(cls: type[Backend]) -> Availability:
    try:
        return cls.availability()
    except Exception as exc:
        return Availability(False, f"availability check failed: {exc!r}")


def list_devices() -> list[DeviceInfo]:
    """Known devices first (installed or not), then any third-party ones."""
    installed = installed_backends()
    infos = []
    for name in [*KNOWN_DEVICES, *sorted(set(installed) - set(KNOWN_DEVICES))]:
        entry = installed.get(name)
        if entry is None:
            infos.append(DeviceInfo(name, None, Availability(False, _not_installed(name))))
        elif (error := _load_error(entry)) is not None:
            infos.append(DeviceInfo(name, None, Availability(False, error)))
        else:
            infos.append(DeviceInfo(name, entry, _availability(entry)))
    return infos


def _not_installed(name: str) -> str:
    return f"not installed: pip install -e backends/{name} (package octavo-{name}, in the octavo repository)"


def select_backend(device: str = "auto", device_options: Mapping[str, Any] | None = None) -> Backend:
    """The backend for `--device`, with its options parsed; fails at once, saying what to
    install or why not."""
    from octavo.engine.options import parse_options

    infos = {info.name: info for info in list_devices()}
    if device == "auto":
        usable = [i for i in infos.values() if i.availability.ok and i.availability.auto]
        if not usable:
            reasons = "; ".join(f"{i.name}: {i.availability.reason}" for i in infos.values())
            raise ConfigError(f"no usable device ({reasons})")
        info = max(usable, key=lambda i: i.backend.priority)
    else:
        info = infos.get(device)
        if info is None:
            raise ConfigError(f"unknown device {device!r}; known: auto, {', '.join(infos)}")
        if not info.availability.ok:
            raise ConfigError(f"device {device!r} is unusable: {info.availability.reason}")
    return info.backend(parse_options(info.backend, device_options or {}, loadable_backends()))
