"""Typed TOML: frozen dataclass trees from TOML tables, with errors that name the key.

Shared by the gateway's configuration and by every lab role's own config file, so that
all of them refuse a misspelled key or a wrong type the same way (hypercorn silently
accepts misspelled keys: we don't). ``build(cls, table, path)`` is the whole contract.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gateway.addresses import (
    HostPort,
    parse_host_port,
    parse_port_range,
    parse_transport_address,
)
from sip.port_range import PortRange
from sip.transport import TransportAddress

T = TypeVar("T")

TEXT_TYPES = (str, TransportAddress, HostPort, PortRange)
"""Field types written as one string in the file (never as a table)."""


class ConfigError(ValueError):
    """A configuration that cannot be used; ``key`` is the dotted path of the culprit."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key placed under ``prefix`` (a section or list item)."""
        key = f"{prefix}.{self.key}" if self.key else prefix
        return type(self)(key, self.message)


class UnknownKeyError(ConfigError):
    """A key the configuration does not have (a typo, usually)."""

    def __str__(self) -> str:
        return f"unknown key '{self.key}'" + (f" ({self.message})" if self.message else "")


def type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def wrong_type(key: str, expected: str, value: object) -> ConfigError:
    return ConfigError(key, f"expected {expected}, got {type_name(value)}")


def convert(hint: Any, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
    """Check and convert one TOML value to the field type ``hint``."""
    if isinstance(hint, types.UnionType):
        # Only ``X | None`` is used, and TOML has no null.
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        (item_hint, _) = typing.get_args(hint)
        if not isinstance(value, list):
            raise wrong_type(key, "array", value)
        return tuple(
            convert(item_hint, item, f"{key}[{index}]", meta) for index, item in enumerate(value)
        )
    if dataclasses.is_dataclass(hint) and hint not in TEXT_TYPES:
        if not isinstance(value, dict):
            raise wrong_type(key, "table", value)
        return build(typing.cast(type[Any], hint), value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong_type(key, "boolean", value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong_type(key, "integer", value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong_type(key, "number", value)
        return float(value)
    if hint is PortRange and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise wrong_type(key, "string", value)
    try:
        if hint is str:
            return value
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return parse_enum(hint, value)
        if hint is TransportAddress:
            transport, port = meta.get("address", (None, None))
            return parse_transport_address(value, default_transport=transport, default_port=port)
        if hint is HostPort:
            return parse_host_port(value)
        if hint is PortRange:
            return parse_port_range(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    raise TypeError(f"no converter for {hint!r} ({key})")


def parse_enum(cls: type[enum.Enum], text: str) -> enum.Enum:
    wanted = " ".join(text.split()).lower()
    for member in cls:
        if str(member.value).lower() == wanted:
            return member
    allowed = ", ".join(repr(str(member.value).lower()) for member in cls)
    raise ValueError(f"expected one of {allowed}, got {text!r}")


def build(cls: type[Any], data: Mapping[str, Any], path: str) -> Any:
    """One dataclass from a TOML table; every error names its dotted key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else ""
            raise UnknownKeyError(f"{path}.{key}" if path else key, hint)
    kwargs: dict[str, Any] = {}
    for name, spec in fields.items():
        key = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = convert(hints[name], data[name], key, spec.metadata)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise exc.under(path) if path else exc from None


def field_hint(cls: Any, dotted: str) -> Any:
    """The type of ``dotted`` (nested tables via dots) in dataclass ``cls``, or None."""
    hint: Any = None
    for part in dotted.split("."):
        if cls is None or not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        hint = hints[part]
        cls = hint if dataclasses.is_dataclass(hint) and hint not in TEXT_TYPES else None
    return hint


def parse_override_value(hint: Any, text: str) -> Any:
    """Text from the environment or a flag, as the TOML value it stands for."""
    if hint in TEXT_TYPES or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data["a"]["b"]["c"] = value`` for ``a.b.c``, creating tables on the way."""
    *parents, last = dotted.split(".")
    table = data
    for index, parent in enumerate(parents):
        table = table.setdefault(parent, {})
        if not isinstance(table, dict):
            raise wrong_type(".".join(parents[: index + 1]), "table", table)
    table[last] = value


def flag_overrides(items: Iterable[str]) -> list[tuple[str, str, str]]:
    """``section.key=value`` strings (``--set``) as (dotted key, value, origin)."""
    found = []
    for item in items:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError("--set", f"expected section.key=value, got {item!r}")
        found.append((dotted.strip(), value, f"--set {dotted.strip()}"))
    return found


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a table; unreadable or invalid files are a ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("", "not UTF-8 text") from None
    return parse_toml(text)


def parse_toml(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"invalid TOML: {exc}") from None


def load_dataclass(cls: type[T], path: str | Path, *, overrides: Iterable[str] = ()) -> T:
    """A role's config file as dataclass ``cls``; ``--set a.b=v`` overrides applied first."""
    data = read_toml(path)
    for dotted, text, origin in flag_overrides(overrides):
        hint = field_hint(cls, dotted)
        if hint is None:
            raise UnknownKeyError(dotted, f"from {origin}")
        set_dotted(data, dotted, parse_override_value(hint, text))
    built: T = build(cls, data, "")
    return built
