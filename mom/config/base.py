"""The machinery every config shares: JSON load/save with format versions, validated copies with ``replace``, type
checks of dataclass fields, parsing of command-line override strings, and 'did you mean' suggestions."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

from mom.errors import ConfigError
from mom.fileio import (
    read_json,
    write_json_atomic,  # noqa: F401  (re-exported: configs are written with it)
)


class JsonConfig:
    """JSON (de)serialisation and validated copies shared by :class:`MoMConfig` and :class:`TrainConfig`.

    Subclasses are dataclasses that validate in ``__post_init__`` and set the class attributes below, which only
    change the wording of errors and the file-format version."""

    _FORMAT_VERSION: ClassVar[int]
    _READS_VERSIONS: ClassVar[tuple[int, ...]] = ()  # older format versions load reads, through _upgrade
    _LABEL: ClassVar[str]  # "" or "train ": "unknown train field(s)", "train config file not found"
    _KIND: ClassVar[str]  # "model" or "train": "unknown model field 'x'" in overrides

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | None = None):
        source = source or f"{cls._LABEL}config"
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object of {cls._KIND} fields, got {type(d).__name__}")
        d = dict(d)
        d.pop("format_version", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            names = ", ".join(_field_name(u) for u in unknown)
            raise ConfigError(f"{source}: unknown {cls._LABEL}field(s) {names}{suggest(unknown[0], known)}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON atomically (temporary file, fsync, rename)."""
        write_json_atomic(path, {"format_version": self._FORMAT_VERSION, **self.to_dict()})

    @classmethod
    def load(cls, path: str | os.PathLike):
        path, what = Path(path), f"{cls._LABEL}config"
        d = read_json(path, what, ConfigError)
        version = d.get("format_version", cls._FORMAT_VERSION) if isinstance(d, dict) else cls._FORMAT_VERSION
        readable = (cls._FORMAT_VERSION, *cls._READS_VERSIONS)
        if version not in readable or isinstance(version, bool):
            raise ConfigError(f"{path}: {what} format_version {d['format_version']} is not supported "
                              f"(expected {' or '.join(map(str, sorted(set(readable))))})")
        return cls.from_dict(cls._upgrade(d, version), source=str(path))

    @classmethod
    def _upgrade(cls, d: Any, version: int) -> Any:
        """Hook: a config read from a file of an older ``format_version`` (one of ``_READS_VERSIONS``), made current:
        a field added later whose default changes what an older config computed gets that config's value."""
        return d

    # Named sets of field values one override sets at once (``--model.routers paper``): name → value → fields. Not
    # fields: a config stores the fields they set. Fields given in the same call win over a bundle's.
    _BUNDLES: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}

    def replace(self, **changes: Any):
        """A validated copy with some fields changed (string values are parsed as the field's type); a bundle name
        (``_BUNDLES``) sets its fields."""
        d = self.to_dict()
        types = field_types(type(self))
        for k in [k for k in changes if k in self._BUNDLES]:
            value, choices = changes.pop(k), self._BUNDLES[k]
            if value not in choices:
                raise ConfigError(f"{k} must be one of {', '.join(map(repr, choices))}, got {value!r} (it sets "
                                  f"{', '.join(next(iter(choices.values())))})")
            changes = {**choices[value], **changes}
        for k, v in changes.items():
            if k not in types:
                raise ConfigError(f"unknown {self._KIND} field {k!r}{suggest(k, set(types) | set(self._BUNDLES))}")
            d[k] = parse_value(k, v, types[k]) if isinstance(v, str) else v
        self._adjust_replaced(d, changes)
        return type(self).from_dict(d, source="override")

    def _adjust_replaced(self, d: dict[str, Any], changes: dict[str, Any]) -> None:
        """Hook: fix up derived fields of a copy made by :meth:`replace`."""


# ---------------------------------------------------------------------------------------------- helpers
def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_types(cfg: Any) -> None:
    """Reject values of the wrong type (JSON or Python callers) with the field's name."""
    for name, tp in field_types(type(cfg)).items():
        value = getattr(cfg, name)
        if not is_instance(value, tp):
            raise ConfigError(f"{name} must be {_type_name(tp)}, got {value!r}")


def is_instance(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(is_instance(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(tp, str(tp))


def parse_value(name: str, text: str, tp: Any) -> Any:
    """Parse a command-line string into a field of type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if text not in typing.get_args(tp):
            raise ConfigError(f"{name} must be {_type_name(tp)}, got {text!r}")
        return text
    if origin is not None:  # Optional[...]
        if text.lower() in ("none", "null"):
            return None
        return parse_value(name, text, next(a for a in typing.get_args(tp) if a is not type(None)))
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ConfigError(f"{name} must be {_type_name(tp)}, got {text!r}") from None
    return text


def _field_name(name: str) -> str:
    """A field name as written in an error: quoted when it is not a plain identifier (keeps the error one line)."""
    return name if name.isidentifier() else repr(name)


def suggest(word: str, options: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, sorted(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def resolve_spec(spec: str, cls, file_name: str, by_name):
    """``spec`` is a JSON file, a directory holding ``file_name``, or else a name for ``by_name``."""
    if not spec.strip():  # Path("") is the current directory: say what is wrong instead of looking there
        raise ConfigError(f"empty {cls._LABEL}config name: give a preset name or a JSON config path")
    p = Path(spec)
    if spec.endswith(".json") or p.is_file():
        return cls.load(p)
    if p.is_dir():
        return cls.load(p / file_name)
    return by_name(spec)
