"""Backend options: flags in `--help`, YAML keys and `LLM(...)` keywords, turned into the
backend's typed `BackendOptions`.

A backend declares its options as a dataclass (`octavo.backend.BackendOptions`); the core
never names one. Flags are added per options class, in a group titled by the backends that
share it (several backends may share one class), with `argparse.SUPPRESS` defaults so that only what
the user gave reaches `EngineConfig.device_options`; the dataclass supplies the defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from octavo.backend import Backend, BackendOptions, ConfigError

logger = logging.getLogger("octavo")

DEST_PREFIX = "device_option."  # argparse dest of an option's flag: DEST_PREFIX + field name
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


@dataclass(frozen=True, slots=True)
class OptionField:
    name: str
    flag: str
    kind: Any  # the field's type with `| None` removed
    optional: bool  # None is a valid value
    default: Any
    help: str


def option_fields(cls: type[BackendOptions]) -> list[OptionField]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, optional = _strip_none(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        out.append(OptionField(f.name, flag, kind, optional, default, f.metadata.get("help", "")))
    return out


def _strip_none(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


# ----------------------------------------------------------------------------- values


def convert(value: Any, f: OptionField) -> Any:
    """`value` (from argparse, YAML or Python) as the field's type; ConfigError naming it."""
    if value is None:
        if f.optional:
            return None
        raise ConfigError(f"{f.flag} must be set (it has no 'none' value)")
    try:
        if typing.get_origin(f.kind) is list:
            (item,) = typing.get_args(f.kind)
            items = value if isinstance(value, (list, tuple)) else [value]
            return [_scalar(v, item) for v in items]
        return _scalar(value, f.kind)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{f.flag}: {exc}") from None


def _scalar(value: Any, kind: Any) -> Any:
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if kind in (int, float):
        noun = "an integer" if kind is int else "a number"
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected {noun}, got {value!r}")
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"expected {noun}, got {value!r}") from None
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported option type {kind!r}")


def parse_options(backend: type[Backend], values: Mapping[str, Any],
                  others: Mapping[str, type[Backend]] | None = None) -> BackendOptions:
    """`values` (option name -> value) as `backend`'s typed options. Options of the other
    installed backends (`others`) are ignored with a warning (a YAML file shared by machines
    with different devices); names nobody declares are an error."""
    fields = {f.name: f for f in option_fields(backend.options_class)}
    kwargs = {}
    for name, value in values.items():
        f = fields.get(name)
        if f is not None:
            kwargs[name] = convert(value, f)
            continue
        owners = sorted(n for n, cls in (others or {}).items()
                        if name in {o.name for o in option_fields(cls.options_class)})
        if not owners:
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"unknown option {name!r} for the {backend.name} backend (its options: {known})")
        logger.warning("ignoring %s: an option of the %s backend, and this engine runs on %s",
                       name, ", ".join(owners), backend.name)
    return backend.options_class(**kwargs)


# ----------------------------------------------------------------------------- command line


def add_option_groups(parser: argparse.ArgumentParser, backends: Mapping[str, type[Backend]]) -> None:
    """One argument group per options class, titled by the backends that declare it."""
    by_class: dict[type[BackendOptions], list[str]] = {}
    for name, cls in sorted(backends.items()):
        if dataclasses.is_dataclass(cls.options_class) and option_fields(cls.options_class):
            by_class.setdefault(cls.options_class, []).append(name)
    taken = {flag for action in parser._actions for flag in action.option_strings}
    for options_class, names in by_class.items():
        group = parser.add_argument_group(f"{', '.join(names)} backend{'s' if len(names) > 1 else ''}")
        for f in option_fields(options_class):
            if any(action.dest == DEST_PREFIX + f.name for action in parser._actions):
                continue  # another backend's option of the same name: one flag sets both
            if f.flag in taken:
                logger.warning("the %s backend's option %s is already a flag; set it in the config file",
                               names[0], f.flag)
                continue
            taken.add(f.flag)
            group.add_argument(f.flag, dest=DEST_PREFIX + f.name, default=argparse.SUPPRESS,
                               help=f"{f.help} (default: {f.default})", **_argparse_kwargs(f))


def _argparse_kwargs(f: OptionField) -> dict:
    if f.kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(f.kind) is list:
        (item,) = typing.get_args(f.kind)
        return {"nargs": "+", "metavar": item.__name__.upper()}
    if typing.get_origin(f.kind) is Literal:
        return {"choices": typing.get_args(f.kind)}
    return {"metavar": getattr(f.kind, "__name__", "VALUE").upper()}


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The backend options the user gave on the command line (raw; converted per backend)."""
    return {dest[len(DEST_PREFIX):]: value for dest, value in vars(args).items() if dest.startswith(DEST_PREFIX)}
