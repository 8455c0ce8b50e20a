"""One configuration base for the engine, text and service settings.

Every configuration is a frozen dataclass deriving from :class:`ConfigBase`: typed fields
with defaults, validated in ``__post_init__``, nested configurations as fields. From the
fields alone this module derives

- plain dicts both ways (:meth:`ConfigBase.to_dict`, :meth:`ConfigBase.from_dict`; unknown
  names are a :class:`~streamseq.exceptions.ConfigError`),
- command-line flags (:func:`add_flags`): a field with :func:`flag` metadata becomes an
  option whose type, choices and default come from the field; only flags the user gave
  become overrides (:func:`flag_overrides`), so a config file still applies underneath,
- environment overrides (:func:`env_overrides`): ``<PREFIX><PATH>`` for every field, e.g.
  ``STREAMSEQ_ENGINE_LEARNER_LR=0.003``; the environment is passed in, never read here.

Examples
--------
>>> import argparse
>>> from streamseq.config import EngineConfig
>>> p = argparse.ArgumentParser()
>>> add_flags(p, EngineConfig)
>>> flag_overrides(p.parse_args(["--lr", "0.5", "--no-learn"]))
{'learner': {'lr': 0.5, 'learn': False}}
>>> env_overrides(EngineConfig, {"APP_LEARNER_LR": "0.01", "APP_MODEL_CELL": "lstm",
...                              "HOME": "/"}, "APP_")
{'learner': {'lr': 0.01}, 'model': {'cell': 'lstm'}}
>>> EngineConfig.from_dict({"model": {"hidden": 8}}).model.hidden
8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from typing import Any, TypeVar

from streamseq.exceptions import ConfigError

__all__ = ["ConfigBase", "FlagSpec", "flag", "add_flags", "flag_overrides", "env_overrides",
           "deep_merge", "config_from_dict", "config_to_dict"]

C = TypeVar("C")
_DEST = "config:"


@dataclass(frozen=True)
class FlagSpec:
    """How a field appears on the command line (see :func:`flag`)."""

    name: str | None = None
    help: str = ""
    const: Any = None
    choices: tuple[Any, ...] | None = None


def flag(name: str | None = None, help: str = "", *, const: Any = None,
         choices: tuple[Any, ...] | None = None) -> dict[str, FlagSpec]:
    """Field metadata that makes the field a command-line option.

    ``name`` defaults to ``--<field-name>``; a boolean field whose flag starts with
    ``--no-`` sets it false, any other boolean flag sets it true; ``const`` makes a flag
    without a value that sets the field to ``const`` (e.g. enable an optional section).
    """
    return {"flag": FlagSpec(name, help, const, choices)}


@cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(tp: Any) -> tuple[Any, bool]:
    """``(inner type, accepts None)`` of ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse(raw: str, tp: Any, what: str) -> Any:
    """A string (environment, flag) as a value of type ``tp``."""
    inner, nullable = _optional(tp)
    if nullable and raw.strip().lower() in ("", "none", "null"):
        return None
    try:
        if inner is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if inner in (int, float, str):
            return _finite(inner(raw), what)
        origin = typing.get_origin(inner)
        if origin is tuple:
            return tuple(x.strip() for x in raw.split(",") if x.strip())
        if origin is dict or inner is dict:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return value
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    raise ConfigError(f"{what}: cannot be set from text")


def _finite(value: Any, what: str) -> Any:
    """``value``, unless it is a float NaN or infinity (NaN passes every ``x > 0`` check a
    setting's own validation makes, and no setting means anything by an infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{what}: must be a finite number, not {value!r}")
    return value


def config_from_dict(cls: type[C], d: Mapping[str, Any], where: str = "") -> C:
    """Build the dataclass ``cls`` from a (nested) mapping; absent fields keep defaults."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a table, not {d!r}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - set(known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
    hints = _hints(cls)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        inner, _ = _optional(hints[name])
        path = f"{where}.{name}" if where else name
        if value is not None and is_dataclass(inner) and isinstance(value, Mapping):
            kwargs[name] = config_from_dict(inner, value, path)  # type: ignore[arg-type]
        elif isinstance(value, (list, tuple)):
            item = (typing.get_args(inner) or (None,))[0]
            kwargs[name] = tuple(
                config_from_dict(item, v, path) if isinstance(item, type) and is_dataclass(item)
                and isinstance(v, Mapping) else v for v in value)
        else:
            kwargs[name] = _finite(value, path)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def config_to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as nested plain dicts, tuples as lists."""
    def plain(x: Any) -> Any:
        if is_dataclass(x) and not isinstance(x, type):
            return {f.name: plain(getattr(x, f.name)) for f in fields(x)}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    out: dict[str, Any] = plain(obj)
    return out


class ConfigBase:
    """Methods every configuration dataclass shares (see the module docstring)."""

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        return config_from_dict(cls, d)

    def replace(self: C, **changes: Any) -> C:
        """A copy with top-level or dotted (``"learner.lr"``) fields changed."""
        d = config_to_dict(self)
        for name, value in changes.items():
            parts = name.replace("__", ".").split(".")
            node = d
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"unknown setting {name!r}")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"unknown setting {name!r}")
            node[parts[-1]] = value
        return config_from_dict(type(self), d)


# ---------------------------------------------------------------------------- flags
def _walk(cls: type, path: tuple[str, ...] = ()) -> typing.Iterator[
        tuple[tuple[str, ...], dataclasses.Field[Any], Any]]:
    """Every field of ``cls`` and of its nested configurations: (path, field, type)."""
    hints = _hints(cls)
    for f in fields(cls):  # type: ignore[arg-type]
        tp = hints[f.name]
        yield (*path, f.name), f, tp
        inner, _ = _optional(tp)
        if is_dataclass(inner) and "flag" not in f.metadata:
            yield from _walk(inner, (*path, f.name))  # type: ignore[arg-type]


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_flags(parser: argparse.ArgumentParser | Any, cls: type,
              prefix: tuple[str, ...] = ()) -> None:
    """Add an option for every field of ``cls`` (nested ones included) that has
    :func:`flag` metadata. Options default to "not given"; see :func:`flag_overrides`."""
    for path, f, tp in _walk(cls, prefix):
        spec = f.metadata.get("flag")
        if spec is None:
            continue
        name = spec.name or "--" + path[-1].replace("_", "-")
        dest = _DEST + ".".join(path)
        inner, _ = _optional(tp)
        default = _default_of(f)
        shown = "" if default is None or is_dataclass(default) else f" (default: {default})"
        if spec.const is not None or inner is bool:
            const = spec.const if spec.const is not None else not name.startswith("--no-")
            parser.add_argument(name, dest=dest, action="store_const", const=const,
                                default=argparse.SUPPRESS, help=spec.help)
        else:
            parser.add_argument(name, dest=dest, default=argparse.SUPPRESS,
                                type=_TextParser(tp, name),
                                choices=spec.choices, help=spec.help + shown,
                                metavar=None if spec.choices else path[-1].upper())


class _TextParser:
    """argparse ``type=``: text to the field's type (argparse names it in its errors)."""

    def __init__(self, tp: Any, what: str) -> None:
        self.tp = tp
        self.what = what
        self.__name__ = getattr(_optional(tp)[0], "__name__", "value")

    def __call__(self, raw: str) -> Any:
        return _parse(raw, self.tp, self.what)


def flag_overrides(namespace: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave as flags, as a nested dict (nothing for flags not given)."""
    out: dict[str, Any] = {}
    for key, value in vars(namespace).items():
        if not key.startswith(_DEST):
            continue
        *parents, leaf = key[len(_DEST):].split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


# ---------------------------------------------------------------------------- environment
def _env_path(cls: type, rest: str) -> tuple[list[str], Any] | None:
    """``rest`` (lower case, ``_``-joined) as a field path of ``cls``, longest names first."""
    hints = _hints(cls)
    for f in sorted(fields(cls), key=lambda f: -len(f.name)):  # type: ignore[arg-type]
        inner, _ = _optional(hints[f.name])
        if rest == f.name:
            return [f.name], hints[f.name]
        if rest.startswith(f.name + "_") and is_dataclass(inner):
            found = _env_path(inner, rest[len(f.name) + 1:])  # type: ignore[arg-type]
            if found is not None:
                return [f.name, *found[0]], found[1]
    return None


def env_overrides(cls: type, env: Mapping[str, str], prefix: str,
                  strict: tuple[str, ...] = ()) -> dict[str, Any]:
    """Settings from ``<prefix><PATH>`` variables of ``env`` (a nested dict).

    Variables that name no field are ignored, except under a section listed in ``strict``
    (e.g. ``engine``), where a misspelt name is a :class:`ConfigError`.
    """
    out: dict[str, Any] = {}
    for var, raw in env.items():
        if not var.startswith(prefix):
            continue
        rest = var[len(prefix):].lower()
        found = _env_path(cls, rest)
        if found is None:
            if rest.split("_", 1)[0] in strict:
                raise ConfigError(f"{var}: no such setting")
            continue
        path, tp = found
        inner, _ = _optional(tp)
        if is_dataclass(inner):
            raise ConfigError(f"{var}: {'.'.join(path)} is a section, not a setting")
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = _parse(raw, tp, var)
    return out


def deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``a`` updated by ``b``, nested mappings merged.

    >>> deep_merge({"x": {"a": 1, "b": 2}}, {"x": {"b": 3}, "y": 4})
    {'x': {'a': 1, 'b': 3}, 'y': 4}
    """
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(
            out.get(k), Mapping) else v
    return out
