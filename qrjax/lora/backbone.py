"""The frozen backbone's files: Hugging Face LlamaForCausalLM checkpoints (config.json + safetensors) <-> `LlamaConfig`
and `Llama`'s linen parameters, and the backbone shipped with qrjax.

A checkpoint is a directory holding
- `config.json`: Hugging Face's LlamaConfig (the keys of `HF_CONFIG_KEYS`; a missing key takes Hugging Face's default,
  other keys are ignored except those that change the architecture: model_type, hidden_act, rope_scaling /
  rope_parameters, attention_bias, mlp_bias, which must describe the plain Llama that `Llama` computes);
- the weights: one `model.safetensors`, or shards listed by `model.safetensors.index.json` (its "weight_map").

Tensor names are Hugging Face's (`hf_tensor_shapes`). PyTorch's Linear weights are [d_out, d_in] and become linen
kernels [d_in, d_out]; Hugging Face's q/k projections are stored in the rotate-half layout that `Llama`'s `rotary`
uses, so no permutation of heads is needed (tests/lora/test_backbone.py checks this against a forward pass written
in Hugging Face's convention). float16, bfloat16 and float64 tensors are converted to float32.

The checkpoint's tokenizer is its `tokenizer.json` (Hugging Face's fast-tokenizer file, read with the `tokenizers`
package: `load_tokenizer`), with BOS / EOS / pad ids from config.json's bos_token_id / eos_token_id / pad_token_id,
else from the token names in tokenizer_config.json or special_tokens_map.json; pad defaults to EOS, as in Llama. The
shipped backbones use the byte tokenizer (`qrjax.lora.tasks.BYTE`).

Only numpy and the `safetensors` and `tokenizers` packages are used (no torch, no transformers).
"""

from __future__ import annotations

import json
import struct
from importlib import resources
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from qrjax.lora.config import BACKBONES, HF_CONFIG_KEYS, LlamaConfig
from qrjax.lora.tasks import BYTE, HFTokenizer, Tokenizer

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
# where a checkpoint names its special tokens when config.json gives no ids, in the order they are read
TOKENIZER_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHIPPED = ("tiny",)  # backbones shipped as qrjax/lora/weights/<name>/{config.json, model.safetensors}

# Hugging Face's LlamaConfig defaults: save_pretrained leaves out keys that equal them
HF_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None, "rms_norm_eps": 1e-6,
               "rope_theta": 10000.0, "max_position_embeddings": 2048, "tie_word_embeddings": False}
_INT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "max_position_embeddings")
# safetensors dtype codes this loader converts to float32
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
# every tensor of a LlamaForCausalLM checkpoint the model does not use: RoPE's precomputed inverse frequencies
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
_MAX_LISTED = 12  # problems listed in one error message


# ------------------------------------------------------------------------------------------------ config.json


def config_from_hf(hf: dict, source: str = "config.json") -> LlamaConfig:
    """A Hugging Face Llama config.json (as a dict) -> LlamaConfig.

    Raises ValueError naming `source` and every problem: a model_type other than "llama", a hidden_act other than
    "silu", RoPE scaling (rope_scaling / rope_parameters of a type other than "default"), attention or MLP biases,
    and keys of the wrong type. A missing head_dim (or one of null) gives LlamaConfig's head_dim 0 (= hidden_size //
    num_heads), a missing num_key_value_heads gives num_attention_heads (multi-head attention)."""
    if not isinstance(hf, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(hf).__name__}")
    problems = []
    model_type = hf.get("model_type")
    if model_type != "llama":
        problems.append(f"model_type {model_type!r} is not supported (only 'llama': LlamaForCausalLM)")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        problems.append(f"hidden_act {act!r} is not supported (Llama's SwiGLU uses 'silu')")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key, False) not in (False, None):
            problems.append(f"{key} {hf[key]!r} is not supported (the backbone has no biases)")
    values = {k: hf.get(k, default) for k, default in HF_DEFAULTS.items()}
    for key in ("rope_scaling", "rope_parameters"):  # rope_parameters: transformers >= 5 (it also holds rope_theta)
        rope = hf.get(key)
        if rope is None:
            continue
        kind = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else rope
        if kind != "default":
            problems.append(f"{key} {rope!r} is not supported (only plain RoPE: null or rope_type 'default')")
        elif key == "rope_parameters" and "rope_theta" in rope:
            values["rope_theta"] = rope["rope_theta"]
    if values["num_key_value_heads"] is None:
        values["num_key_value_heads"] = values["num_attention_heads"]
    if values["head_dim"] is None:
        values["head_dim"] = 0
    for key in _INT_KEYS:
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "head_dim" else 1):
            problems.append(f"{key} must be a positive integer, got {v!r}")
    for key in ("rms_norm_eps", "rope_theta"):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            problems.append(f"{key} must be a positive number, got {v!r}")
    if not isinstance(values["tie_word_embeddings"], bool):
        problems.append(f"tie_word_embeddings must be true or false, got {values['tie_word_embeddings']!r}")
    if problems:
        raise ValueError(f"{source}: unsupported Llama config: " + "; ".join(problems))
    fields = {HF_CONFIG_KEYS[k]: v for k, v in values.items()}
    fields["rms_norm_eps"], fields["rope_theta"] = float(fields["rms_norm_eps"]), float(fields["rope_theta"])
    try:
        return LlamaConfig(**fields)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def config_to_hf(config: LlamaConfig) -> dict:
    """LlamaConfig -> Hugging Face's config.json dict (LlamaForCausalLM, float32). head_dim is written only when the
    config sets it (Hugging Face derives hidden_size // num_attention_heads when it is absent)."""
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    for hf_key, field in HF_CONFIG_KEYS.items():
        if field == "head_dim" and not config.head_dim:
            continue
        hf[hf_key] = getattr(config, field)
    hf.update({"hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "rope_scaling": None,
               "torch_dtype": "float32"})
    return hf


# ------------------------------------------------------------------------------------------------ tensor names


def hf_tensor_shapes(config: LlamaConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...], bool]]:
    """Every tensor of the checkpoint: Hugging Face name -> (its shape, the linen parameter path, whether the
    parameter is its transpose). lm_head.weight is absent with tie_word_embeddings."""
    d, v = config.hidden_size, config.vocab_size
    out = {"model.embed_tokens.weight": ((v, d), ("embed_tokens", "embedding"), False)}
    for i in range(config.num_layers):
        layer = f"layers_{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"model.layers.{i}.{norm}.weight"] = ((d,), (layer, norm, "weight"), False)
        for block, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                             ("mlp", ("gate_proj", "up_proj", "down_proj"))):
            for name in names:
                d_in, d_out = config.projection_shape(name)
                out[f"model.layers.{i}.{block}.{name}.weight"] = ((d_out, d_in), (layer, block, name, "kernel"), True)
    out["model.norm.weight"] = ((d,), ("norm", "weight"), False)
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = ((v, d), ("lm_head", "kernel"), True)
    return out


def _ignored(name: str, config: LlamaConfig) -> bool:
    # a tied checkpoint may still carry lm_head.weight (a copy of the embedding); the model reads the embedding
    return name.endswith(_IGNORED_SUFFIXES) or (config.tie_word_embeddings and name == "lm_head.weight")


def _raise(source: str, problems: list[str]) -> None:
    if problems:
        shown = problems[:_MAX_LISTED] + ([f"... and {len(problems) - _MAX_LISTED} more"]
                                          if len(problems) > _MAX_LISTED else [])
        raise ValueError(f"checkpoint {source}: " + "; ".join(shown))


def _shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


# ------------------------------------------------------------------------------------------------ safetensors


def read_header(path: str | Path) -> dict[str, dict]:
    """A safetensors file's header: tensor name -> {"dtype": "F32"|"BF16"|..., "shape": [...], "data_offsets":
    [begin, end]} (byte offsets after the header); the "__metadata__" entry is left out."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a safetensors file (bad header: {err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (the header is not a JSON object)")
    header.pop("__metadata__", None)
    return header


def _read_raw(path: Path, entry: dict) -> np.ndarray:
    """A tensor read straight from the file's bytes (for bfloat16 where safetensors' numpy loader lacks it)."""
    import ml_dtypes  # a dependency of jax

    # safetensors stores little-endian bytes
    dtypes = {"BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"),
              "F64": np.dtype("<f8")}
    begin, end = entry["data_offsets"]
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n + begin)
        data = f.read(end - begin)
    return np.frombuffer(data, dtype=dtypes[entry["dtype"]]).reshape(entry["shape"])


def read_tensors(path: str | Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Tensors of one safetensors file (all, or `names`) as float32 numpy arrays (F16, BF16 and F64 converted).
    A tensor of another dtype raises ValueError naming it and the file."""
    path = Path(path)
    header = read_header(path)
    names = list(header) if names is None else names
    bad = [f"tensor {n!r} has dtype {header[n].get('dtype')}, expected one of {_FLOAT_DTYPES}" for n in names
           if header[n].get("dtype") not in _FLOAT_DTYPES]
    _raise(str(path), bad)
    out = {}
    with safe_open(str(path), framework="np") as f:
        for name in names:
            try:
                array = f.get_tensor(name)
            except Exception:  # older safetensors have no numpy bfloat16; the header says where its bytes are
                if header[name]["dtype"] != "BF16":
                    raise
                array = _read_raw(path, header[name])
            out[name] = np.asarray(array, dtype=np.float32)
    return out


# ------------------------------------------------------------------------------------------------ load and save


def _weight_files(directory: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The checkpoint's safetensors files and, for a sharded one, the index's weight_map."""
    single, index = directory / WEIGHTS_FILE, directory / INDEX_FILE
    if single.is_file():
        return [single], None
    if not index.is_file():
        raise ValueError(f"checkpoint {directory}: no {WEIGHTS_FILE} and no {INDEX_FILE} (sharded weights)")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{index}: not a safetensors index (a JSON object with a 'weight_map'): {err!r}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: 'weight_map' must map tensor names to shard file names")
    files = [directory / name for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{index}: shard files {missing} are missing from {directory}")
    return files, weight_map


def load_backbone(path: str | Path) -> tuple[LlamaConfig, dict]:
    """A Hugging Face LlamaForCausalLM checkpoint directory -> (LlamaConfig, `Llama`'s params: float32 jax arrays).

    Raises ValueError naming the file and every problem: an unsupported config (see config_from_hf), a missing
    tensor, a tensor of the wrong shape (with the expected and actual shapes), an unexpected tensor, a tensor that is
    not floating point, a shard the index does not match."""
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"checkpoint {directory}: not a directory")
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise ValueError(f"checkpoint {directory}: no {CONFIG_FILE}")
    try:
        hf = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path}: not valid JSON ({err})") from None
    config = config_from_hf(hf, str(cfg_path))
    files, weight_map = _weight_files(directory)
    return config, _load_params(config, files, weight_map, str(directory / (INDEX_FILE if weight_map else
                                                                             WEIGHTS_FILE)))


def _load_params(config: LlamaConfig, files: list[Path], weight_map: dict | None, source: str) -> dict:
    expected = hf_tensor_shapes(config)
    where: dict[str, Path] = {}
    headers = {}
    problems = []
    for file in files:
        headers[file] = read_header(file)
        for name in headers[file]:
            if name in where:
                problems.append(f"tensor {name!r} is in both {where[name].name} and {file.name}")
            where[name] = file
    if weight_map is not None:
        problems += [f"tensor {n!r}: the index puts it in {f}, which does not hold it"
                     for n, f in weight_map.items() if n not in headers[files[0].parent / f]]
    for name, (shape, _, _) in expected.items():
        if name not in where:
            problems.append(f"missing tensor {name!r} (expected shape {_shape(shape)}) in {source}")
        elif tuple(headers[where[name]][name].get("shape", ())) != shape:
            problems.append(f"tensor {name!r} in {where[name]} has shape "
                            f"{_shape(headers[where[name]][name].get('shape', ()))}, expected {_shape(shape)}")
    problems += [f"unexpected tensor {name!r} (shape {_shape(headers[file][name].get('shape', ()))}) in {file}"
                 for name, file in where.items() if name not in expected and not _ignored(name, config)]
    _raise(source, problems)
    params: dict[str, Any] = {}
    for file in files:
        names = [n for n in headers[file] if n in expected]
        for name, array in read_tensors(file, names).items():
            _, keys, transpose = expected[name]
            node = params
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = jnp.asarray(array.T if transpose else array)
    return params


def params_to_hf(config: LlamaConfig, params: dict) -> dict[str, np.ndarray]:
    """`Llama`'s params -> Hugging Face tensors (float32, C-contiguous). Raises ValueError naming every missing,
    misshapen or unexpected parameter."""
    tensors, problems, used = {}, [], set()
    for name, (shape, keys, transpose) in hf_tensor_shapes(config).items():
        node = params
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        path = "/".join(keys)
        used.add(path)
        if node is None:
            problems.append(f"missing parameter {path}")
            continue
        array = np.asarray(node, dtype=np.float32)
        array = array.T if transpose else array
        if array.shape != shape:
            problems.append(f"parameter {path} has shape {_shape(array.T.shape if transpose else array.shape)}, "
                            f"expected {_shape(shape[::-1] if transpose else shape)}")
            continue
        tensors[name] = np.ascontiguousarray(array)

    def leaves(node, prefix=()):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from leaves(v, prefix + (str(k),))
        else:
            yield "/".join(prefix)

    problems += [f"unexpected parameter {p}" for p in leaves(dict(params)) if p not in used]
    if problems:
        raise ValueError("save_backbone: params do not match the config: " + "; ".join(problems[:_MAX_LISTED]))
    return tensors


def save_backbone(directory: str | Path, config: LlamaConfig, params: dict, *, byte_tokenizer: bool = True) -> Path:
    """Write directory/config.json (config_to_hf) and directory/model.safetensors (Hugging Face names, float32).
    load_backbone(directory) returns the same config and bit-identical params. Returns the directory.

    byte_tokenizer: the backbone reads qrjax's byte tokens (`BYTE`: what `pretrain` trains on), recorded in
    config.json as "qrjax_tokenizer": "byte" with its special ids, so load_tokenizer finds it without a
    tokenizer.json; False for a backbone whose tokenizer.json the caller writes."""
    directory = Path(directory)
    tensors = params_to_hf(config, params)
    directory.mkdir(parents=True, exist_ok=True)
    hf = config_to_hf(config)
    if byte_tokenizer:
        hf.update({BYTE_MARKER: "byte", "bos_token_id": BYTE.bos_id, "eos_token_id": BYTE.eos_id,
                   "pad_token_id": BYTE.pad_id})
    (directory / CONFIG_FILE).write_text(json.dumps(hf, indent=2) + "\n")
    # transformers refuses safetensors files without a "format" entry in their metadata
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    return directory


def load_shipped(name: str = "tiny") -> tuple[LlamaConfig, dict]:
    """A backbone shipped inside qrjax (qrjax/lora/weights/<name>/), read through importlib.resources."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped backbone {name!r}; shipped: {', '.join(SHIPPED)}")
    folder = resources.files("qrjax.lora") / "weights" / name
    with resources.as_file(folder / CONFIG_FILE) as cfg, resources.as_file(folder / WEIGHTS_FILE) as weights:
        if not (Path(cfg).is_file() and Path(weights).is_file()):
            raise FileNotFoundError(f"shipped backbone {name!r}: {folder} lacks {CONFIG_FILE} or {WEIGHTS_FILE} "
                                    "(the package is incomplete)")
        config = config_from_hf(json.loads(Path(cfg).read_text()), f"qrjax.lora/weights/{name}/{CONFIG_FILE}")
        return config, _load_params(config, [Path(weights)], None, f"qrjax.lora/weights/{name}/{WEIGHTS_FILE}")


def resolve_backbone(spec: str | Path) -> tuple[LlamaConfig, dict]:
    """A --backbone value: a shipped name (SHIPPED) or a checkpoint directory (load_backbone).

    Anything else raises ValueError naming the spec and the shipped backbones."""
    spec_s = str(spec)
    if spec_s in SHIPPED:
        return load_shipped(spec_s)
    if Path(spec_s).is_dir():
        return load_backbone(spec_s)
    raise _unknown_backbone(spec_s)


def _unknown_backbone(spec: str) -> ValueError:
    hint = (f" ({spec!r} is an architecture in BACKBONES without shipped weights: build random ones with "
            "qrjax.lora.model.init_backbone)" if spec in BACKBONES else "")
    return ValueError(f"backbone {spec!r} is neither a shipped backbone ({', '.join(SHIPPED)}) nor a checkpoint "
                      f"directory (config.json + model.safetensors){hint}")


# ------------------------------------------------------------------------------------------------ tokenizer


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _special_token(directory: Path, kind: str) -> int | str | None:
    """The id (config.json's `<kind>_token_id`) or token string (`<kind>_token` of the tokenizer config files) of a
    special token; None when no file names it. A list of EOS ids (Llama 3 instruct) gives its first."""
    config = _read_json(directory / CONFIG_FILE) if (directory / CONFIG_FILE).is_file() else {}
    value = config.get(f"{kind}_token_id")
    if isinstance(value, list) and value:
        value = value[0]
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{directory / CONFIG_FILE}: {kind}_token_id must be a token id, got {value!r}")
        return value
    for name in TOKENIZER_CONFIG_FILES:
        if not (directory / name).is_file():
            continue
        token = _read_json(directory / name).get(f"{kind}_token")
        if isinstance(token, dict):  # a serialised AddedToken
            token = token.get("content")
        if token is not None:
            if not isinstance(token, str):
                raise ValueError(f"{directory / name}: {kind}_token must be a token string, got {token!r}")
            return token
    return None


BYTE_MARKER = "qrjax_tokenizer"  # config.json key of a backbone that reads qrjax's byte tokens (save_backbone)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a backbone: a shipped name (SHIPPED), or a directory whose config.json says
    "qrjax_tokenizer": "byte" and holds no tokenizer.json (save_backbone's) -> the byte tokenizer `BYTE`; a checkpoint
    directory -> an `HFTokenizer` over its tokenizer.json, with bos / eos / pad ids from config.json (bos_token_id, eos_token_id,
    pad_token_id), else from tokenizer_config.json / special_tokens_map.json (bos_token, eos_token, pad_token); pad
    defaults to eos.

    Raises ValueError naming the directory for a missing directory, a missing tokenizer.json (saying so, and how to
    write one when only SentencePiece's tokenizer.model is there), no BOS or EOS named anywhere, or a special token
    outside the vocabulary."""
    if str(path) in SHIPPED:
        return BYTE
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"checkpoint {directory}: not a directory (nor a shipped backbone: {', '.join(SHIPPED)})")
    file = directory / TOKENIZER_FILE
    config_file = directory / CONFIG_FILE
    if not file.is_file() and config_file.is_file() and json.loads(config_file.read_text()).get(BYTE_MARKER) == "byte":
        return BYTE
    if not file.is_file():
        hint = ("; it holds tokenizer.model, a SentencePiece model: write tokenizer.json with transformers' "
                "AutoTokenizer.from_pretrained(dir).save_pretrained(dir)" if (directory / "tokenizer.model").is_file()
                else "")
        raise ValueError(f"checkpoint {directory}: no {TOKENIZER_FILE} (the Hugging Face tokenizer file the task "
                         f"examples are encoded with){hint}")
    ids = {kind: _special_token(directory, kind) for kind in ("bos", "eos", "pad")}
    missing = [kind for kind in ("bos", "eos") if ids[kind] is None]
    if missing:
        raise ValueError(f"checkpoint {directory}: no {' and no '.join(k.upper() for k in missing)} token: "
                         + "; ".join(f"{CONFIG_FILE} has no {k}_token_id and {' / '.join(TOKENIZER_CONFIG_FILES)} "
                                     f"no {k}_token" for k in missing))
    return HFTokenizer.from_file(file, bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"])


def resolve_tokenizer(spec: str | Path) -> Tokenizer:
    """The tokenizer of a --backbone value (see resolve_backbone): a shipped name -> `BYTE`, a checkpoint directory
    -> load_tokenizer. Anything else raises ValueError naming the spec, as resolve_backbone does."""
    spec_s = str(spec)
    if spec_s in SHIPPED or Path(spec_s).is_dir():
        return load_tokenizer(spec_s)
    raise _unknown_backbone(spec_s)


def check_vocab(config: LlamaConfig, tokenizer: Tokenizer) -> None:
    """Raises ValueError, naming the tokenizer and both sizes, when an id the tokenizer can produce (its vocabulary,
    BOS, EOS, pad) is not below the backbone's config.vocab_size (the embedding table would be indexed past its end).
    A tokenizer smaller than the embedding table is fine (checkpoints often pad it)."""
    top = max(tokenizer.vocab_size - 1, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    if top >= config.vocab_size:
        raise ValueError(f"tokenizer {tokenizer.name} (vocab_size {tokenizer.vocab_size}, ids up to {top}) does not "
                         f"fit the backbone's config.vocab_size {config.vocab_size} (ids 0..{config.vocab_size - 1}): "
                         "they do not belong together")


__all__ = ["CONFIG_FILE", "HF_DEFAULTS", "INDEX_FILE", "SHIPPED", "TOKENIZER_CONFIG_FILES", "TOKENIZER_FILE",
           "WEIGHTS_FILE", "check_vocab", "config_from_hf", "config_to_hf", "hf_tensor_shapes", "load_backbone",
           "load_shipped", "load_tokenizer", "params_to_hf", "read_header", "read_tensors", "resolve_backbone",
           "resolve_tokenizer", "save_backbone"]
