"""Finding backends (entry points) and choosing one for `--device`."""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

from octavo.backend import CONTRACT_VERSION, ENTRY_POINT_GROUP, Availability, Backend
from octavo.config import ConfigError

KNOWN_DEVICES = ("cpu", "openvino", "cuda", "rocm", "tpu", "xpu", "neuron")


@dataclass(slots=True)
class DeviceInfo:
    name: str
    backend: type[Backend] | None
    availability: Availability


def installed_backends() -> dict[str, type[Backend] | Exception]:
    """Every registered backend class, or the error that loading it raised."""
    found: dict[str, type[Backend] | Exception] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception as exc:  # a broken package must not hide the others
            found[ep.name] = exc
    return found


def _availability(cls: type[Backend]) -> Availability:
    if cls.contract_version != CONTRACT_VERSION:
        return Availability(False, f"built for backend contract v{cls.contract_version}, "
                                   f"this octavo speaks v{CONTRACT_VERSION}")
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
        elif isinstance(entry, Exception):
            infos.append(DeviceInfo(name, None, Availability(False, f"failed to import: {entry!r}")))
        else:
            infos.append(DeviceInfo(name, entry, _availability(entry)))
    return infos


def _not_installed(name: str) -> str:
    return f"not installed: pip install 'octavo[{name}]' (package octavo-{name})"


def select_backend(device: str = "auto") -> Backend:
    """The backend for `--device`; fails at once, saying what to install or why not."""
    infos = {info.name: info for info in list_devices()}
    if device == "auto":
        usable = [i for i in infos.values() if i.availability.ok]
        if not usable:
            reasons = "; ".join(f"{i.name}: {i.availability.reason}" for i in infos.values())
            raise ConfigError(f"no usable device ({reasons})")
        return max(usable, key=lambda i: i.backend.priority).backend()
    info = infos.get(device)
    if info is None:
        raise ConfigError(f"unknown device {device!r}; known: auto, {', '.join(infos)}")
    if not info.availability.ok:
        raise ConfigError(f"device {device!r} is unusable: {info.availability.reason}")
    return info.backend()
