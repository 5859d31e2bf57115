"""Presets and `--set key=value` overrides for every system's frozen config dataclass (big_vision style)."""

from __future__ import annotations

import dataclasses


def from_preset(presets: dict, preset: str, overrides: list[str] | tuple[str, ...] | dict | None = None,
                system: str = "config"):
    """presets[preset] with `key=value` overrides (the CLIs' --set); string values are parsed to the field's type."""
    if preset not in presets:
        raise ValueError(f"unknown {system} preset {preset!r}; choose from {sorted(presets)}")
    config = presets[preset]
    if not overrides:
        return config
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for key, value in items:
        if key not in fields:
            raise ValueError(f"--set {key}=...: {type(config).__name__} has no field {key!r}; fields: {sorted(fields)}")
        changes[key] = _parse(key, value, getattr(config, key)) if isinstance(value, str) else value
    return dataclasses.replace(config, **changes)


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected key=value")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _parse(key: str, value: str, current):
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        if isinstance(current, tuple):
            kind = type(current[0]) if current else str
            return tuple(kind(v) for v in value.split(",") if v)
        if current is None:
            return value
        return type(current)(value)
    except ValueError:
        raise ValueError(f"--set {key}={value}: cannot parse as {type(current).__name__}") from None

