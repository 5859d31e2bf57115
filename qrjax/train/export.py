"""Model export and import for every qrjax system: frozen config dataclasses <-> JSON, the workdir's config check,
weights + config files, the models shipped inside the package, and the CLIs' rule for naming a model.

A model is two files with a common stem:
- `<stem>.msgpack`: the variables pytree (nested dicts of numpy arrays and Python scalars), flax msgpack;
- `<stem>.json`: `{"config_class": "<dataclass name>", "config": {field: value, ...}, <meta key>: ..., ...}`.

This module is inference-side: it imports neither the trainer loop, nor orbax, nor optax.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

SUFFIXES = (".json", ".msgpack")
_RESERVED = ("config", "config_class")


# ------------------------------------------------------------------------------------------------ configs


def config_to_dict(config) -> dict:
    """A frozen config dataclass -> a JSON-safe dict of its fields (tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_to_dict: expected a config dataclass instance, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, d: dict, source: str | Path = "<dict>"):
    """cls(**d), with lists restored to tuples for tuple-typed fields.

    Every field of cls must be in d and every key of d must be a field: a missing or unknown field raises a ValueError
    naming the class, `source` (the file d was read from) and the fields, never a silent default or drop. The one
    exception is a field the class lists in its `ADDED_FIELDS` {name: value}: fields added after models were saved,
    with the value that reproduces what files written before them meant, filled in when missing."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: the {cls.__name__} config is a {type(d).__name__}, expected a JSON object")
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    d = {**{k: v for k, v in getattr(cls, "ADDED_FIELDS", {}).items() if k in fields}, **d}
    unknown = sorted(set(d) - set(fields))
    missing = [f for f in fields if f not in d]
    if unknown or missing:
        problems = ([f"unknown fields {unknown}"] if unknown else []) + ([f"missing fields {missing}"] if missing else [])
        raise ValueError(f"{source}: {cls.__name__} config has {' and '.join(problems)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _restore_tuples(hints.get(k), v) for k, v in d.items()})


def _restore_tuples(hint, value):
    """JSON lists -> tuples wherever the field's annotation says tuple (also inside unions such as tuple | None)."""
    if not isinstance(value, list):
        return value
    hint = _tuple_type(hint)
    if hint is None:
        return value
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
        inner = [args[0]] * len(value)
    else:  # tuple[X, Y] (positional) or a bare tuple
        inner = list(args) if len(args) == len(value) else [None] * len(value)
    return tuple(_restore_tuples(h, v) for h, v in zip(inner, value))


def _tuple_type(hint):
    """The tuple type in an annotation (tuple[...], or one member of a union such as tuple[int, ...] | None)."""
    origin = typing.get_origin(hint)
    if hint is tuple or origin is tuple:
        return hint
    if origin in (typing.Union, types.UnionType):
        return next((t for t in map(_tuple_type, typing.get_args(hint)) if t is not None), None)
    return None


def check_workdir_config(workdir: str | Path, config) -> Path:
    """Record config in workdir/config.json on the first run; on later runs the workdir must hold the same config.

    Raises ValueError listing every differing field with the workdir's value and this run's value. Returns the path."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    new = config_to_dict(config)
    if not path.exists():
        path.write_text(json.dumps(new, indent=1))
        return path
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); use a new workdir") from None
    if saved != new:
        absent = object()

        def show(v) -> str:
            return "(absent)" if v is absent else json.dumps(v)

        diffs = [f"{k}: workdir {show(saved.get(k, absent))}, this run {show(new.get(k, absent))}"
                 for k in list(saved) + [k for k in new if k not in saved]
                 if saved.get(k, absent) != new.get(k, absent)]
        raise ValueError(f"workdir {str(workdir)!r} holds a run with a different config; use a new workdir or the "
                         f"same config. {type(config).__name__} fields that differ: " + "; ".join(diffs))
    return path


def check_workdir_run(workdir: str | Path, run: dict) -> Path:
    """A workdir's checkpoints also depend on settings outside the config (the device count a sharded state was
    placed for, the data set, a reference model): the first run records `run` (JSON-safe) in workdir/run.json and a
    later one with other values is refused with a ValueError listing them."""
    path = Path(workdir) / "run.json"
    if path.exists():
        saved = json.loads(path.read_text())
        diffs = [f"{k}: workdir {saved.get(k)!r}, this run {v!r}" for k, v in run.items() if saved.get(k) != v]
        if diffs:
            raise ValueError(f"workdir {str(workdir)!r} holds a run with other settings; use a new workdir or the "
                             f"same settings: {'; '.join(diffs)}")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run, indent=1))
    return path


# ------------------------------------------------------------------------------------------------ model files


def model_stem(path: str | Path) -> Path:
    """A model's stem from the stem itself or either of its files (`x`, `x.json`, `x.msgpack` -> `x`)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in SUFFIXES else path


def save_model(stem: str | Path, config, variables, meta: dict | None = None) -> tuple[Path, Path]:
    """Write <stem>.msgpack (variables, arrays fetched to numpy) and <stem>.json (config, its class name, meta).

    meta: extra JSON-safe entries for the .json (e.g. class names, training steps); the keys 'config' and
    'config_class' are the format's own. Returns (msgpack path, json path)."""
    meta = dict(meta or {})
    clash = [k for k in _RESERVED if k in meta]
    if clash:
        raise ValueError(f"save_model: meta keys {clash} are reserved for the config")
    stem = model_stem(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights, cfg = stem.with_suffix(".msgpack"), stem.with_suffix(".json")
    weights.write_bytes(flax.serialization.msgpack_serialize(jax.device_get(variables)))
    doc = {"config_class": type(config).__name__, "config": config_to_dict(config), **meta}
    cfg.write_text(json.dumps(doc, indent=1))
    return weights, cfg


def load_model_files(stem: str | Path, config_cls: type, template=None) -> tuple[Any, dict, dict]:
    """Read a model written by save_model -> (config, variables, meta).

    stem: the stem, or the path of either file. template: a pytree of the expected variables (arrays or
    jax.ShapeDtypeStruct), or a function config -> such a pytree; with it, the variables are restored into its
    structure and every leaf's shape and dtype is checked. Variables are numpy arrays (and Python scalars)."""
    stem = model_stem(stem)
    files = stem.with_suffix(".json"), stem.with_suffix(".msgpack")
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"model {str(stem)!r}: missing {' and '.join(missing)} (a model is "
                                f"<stem>.json + <stem>.msgpack, written by save_model)")
    return read_model(files[0].read_text(), files[1].read_bytes(), config_cls, template, source=str(stem))


def read_model(json_text: str, msgpack_bytes: bytes, config_cls: type, template=None,
               source: str = "<model>") -> tuple[Any, dict, dict]:
    """The contents of <stem>.json and <stem>.msgpack -> (config, variables, meta); see load_model_files."""
    try:
        doc = json.loads(json_text)
    except json.JSONDecodeError as err:
        raise ValueError(f"model {source!r}: the .json is not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"model {source!r}: the .json holds a {type(doc).__name__}, expected an object "
                         f"{{'config_class': ..., 'config': {{...}}, ...}} as save_model writes")
    if "config_class" not in doc:
        # files written before this format: the watermark's .json was the bare config, the diffusion's had a
        # 'config' entry beside its metadata. They are read as such; the config's fields are checked all the same.
        doc = {"config_class": config_cls.__name__,
               **(doc if isinstance(doc.get("config"), dict) else {"config": doc})}
    if doc["config_class"] != config_cls.__name__:
        raise ValueError(f"model {source!r} holds a {doc['config_class']} config, expected {config_cls.__name__}")
    config = config_from_dict(config_cls, doc["config"], source=f"model {source!r}")
    meta = {k: v for k, v in doc.items() if k not in _RESERVED}
    try:
        variables = flax.serialization.msgpack_restore(msgpack_bytes)
    except Exception as err:  # msgpack raises its own exception types for truncated or foreign data
        raise ValueError(f"model {source!r}: the .msgpack cannot be read ({type(err).__name__}: {err})") from None
    if template is not None:
        variables = restore_into(template(config) if callable(template) else template, variables, source)
    return config, variables, meta


def restore_into(template, variables, source: str = "<model>"):
    """variables restored into template's structure (flax.serialization.from_state_dict), with every leaf's shape
    (and dtype, where the template leaf has one) checked; a ValueError names the first differing paths."""
    try:
        restored = flax.serialization.from_state_dict(template, variables)
    except ValueError as err:
        raise ValueError(f"model {source!r} does not match its config's variables: {err}") from None
    want = [(jax.tree_util.keystr(p), t) for p, t in jax.tree_util.tree_flatten_with_path(template)[0]]
    got = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(restored)[0]}
    problems = []
    for p, t in want:
        if p not in got:
            problems.append(f"missing {p}")
        elif np.shape(got[p]) != np.shape(t):
            problems.append(f"{p} has shape {np.shape(got[p])}, expected {np.shape(t)}")
        elif hasattr(t, "dtype") and np.asarray(got[p]).dtype != np.dtype(t.dtype):
            problems.append(f"{p} has dtype {np.asarray(got[p]).dtype}, expected {np.dtype(t.dtype)}")
    # from_state_dict drops entries the template lacks: name those too
    known = {p for p, _ in want}
    stored = (jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(variables)[0])
    problems += [f"unexpected {p}" for p in stored if p not in known]
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise ValueError(f"model {source!r} does not match its config's variables: {'; '.join(problems[:8])}{more}")
    return restored


# ------------------------------------------------------------------------------------------------ shipped models


def load_pretrained(package: str, name: str, shipped: Sequence[str], config_cls: type,
                    template=None) -> tuple[Any, dict, dict]:
    """A model shipped inside `package` as <package>/weights/<name>.{json,msgpack} -> (config, variables, meta).

    Read through importlib.resources, so it works from an installed wheel or zip as well as from a source tree."""
    if name not in shipped:
        raise ValueError(f"no shipped {package} model {name!r}; shipped: {', '.join(shipped)}")
    folder = resources.files(package) / "weights"
    try:
        text = (folder / f"{name}.json").read_text()
        blob = (folder / f"{name}.msgpack").read_bytes()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"shipped {package} model {name!r}: {err} (the package is incomplete)") from None
    return read_model(text, blob, config_cls, template, source=f"{package}/weights/{name}")


def resolve_model(spec: str | Path, shipped: Sequence[str], load_pretrained_fn: Callable[[str], Any],
                  load_fn: Callable[[Path], Any]):
    """The CLIs' rule for a --model value: one of the shipped names is that shipped model; anything else is a path
    (the stem, or either file). A spec that is neither raises FileNotFoundError naming it and the shipped models."""
    spec = str(spec)
    if spec in shipped:
        return load_pretrained_fn(spec)
    stem = model_stem(spec)
    if any(stem.with_suffix(s).is_file() for s in SUFFIXES):
        return load_fn(Path(spec))
    raise FileNotFoundError(f"model {spec!r} is neither a shipped model ({', '.join(shipped)}) nor a model on disk: "
                            f"missing {stem.with_suffix('.json')} and {stem.with_suffix('.msgpack')}")


__all__ = ["check_workdir_config", "check_workdir_run", "config_from_dict", "config_to_dict", "load_model_files",
           "load_pretrained", "model_stem", "read_model", "resolve_model", "restore_into", "save_model"]
