"""Pre-training of the small backbone on the synthetic text skills of `qrjax.lora.tasks.pretrain_examples` (copy,
next number, upper-casing, shifting letters, addition without carry, counting), with the shared trainer
(`qrjax.train.fit`: checkpoints, resume, metrics JSONL, progress).

The loss is next-token cross-entropy on the completion tokens and the final EOS (`encode_examples`' mask), averaged
over the batch's masked tokens. Held-out examples are those whose prompt hashes into HELDOUT_BUCKET (a tenth of all
prompts, every skill represented): training never sees them, and they are scored by held-out loss and greedy exact
match (`qrjax.lora.generate.greedy_complete`).

    python -m qrjax.lora.pretrain --workdir DIR [--steps N] [--batch-size B] [--lr LR] [--seed S] [--devices N]

writes DIR/checkpoints/, DIR/metrics.jsonl, DIR/backbone/ (Hugging Face layout: `qrjax.lora.backbone`) and
DIR/summary.json, prints the summary as one JSON line, and logs to stderr. The shipped backbone
(qrjax/lora/weights/tiny/, its run recorded in pretrain.json there) was made with the defaults and `--eval-every 500`:
2000 steps, 92 s on the 2-core CPU, held-out exact match 1.0 on 600 prompts (0.59 / 0.91 / 1.0 after 500 / 1000 /
1500 steps). The corpus is short (at most 24 tokens): longer sequences reach positions pre-training never saw.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qrjax import parallel
from qrjax.lora.backbone import save_backbone
from qrjax.lora.config import BACKBONES, LlamaConfig
from qrjax.lora.generate import greedy_complete
from qrjax.lora.model import Llama, init_backbone
from qrjax.lora.tasks import PRETRAIN_SKILLS, VOCAB_SIZE, encode_examples, fit_seq_len, pretrain_examples
from qrjax.train import TrainState, fit, make_optimizer, read_metrics
from qrjax.train.export import check_workdir_config, check_workdir_run

HELDOUT_BUCKETS = 10
HELDOUT_BUCKET = 0
# the defaults the shipped "tiny" backbone was trained with (2-core CPU: see weights/tiny/pretrain.json)
STEPS = 2000
BATCH_SIZE = 64
SEQ_LEN = 24  # every pretrain_examples example fits (the longest: "shift:" + 8 letters + "=" + 8 letters + EOS)
LEARNING_RATE = 3e-3
WARMUP_STEPS = 100
WEIGHT_DECAY = 0.01
NUM_TRAIN = 50_000
NUM_EVAL = 600


def is_heldout(prompt: str) -> bool:
    """Whether a prompt belongs to the held-out tenth (a fixed hash of its bytes, independent of seeds)."""
    return zlib.crc32(prompt.encode("utf-8")) % HELDOUT_BUCKETS == HELDOUT_BUCKET


def train_examples(n: int, seed: int = 0) -> list:
    """The first n draws of pretrain_examples(seed = 2 seed) outside the held-out prompts."""
    out = [e for e in pretrain_examples(n + n // 4 + 1024, seed=2 * seed) if not is_heldout(e[0])][:n]
    if len(out) < n:
        raise ValueError(f"pretrain: found {len(out)} training examples, asked for {n}")
    return out


def heldout_examples(n: int, seed: int = 0) -> list:
    """The first n distinct held-out prompts of pretrain_examples(seed = 2 seed + 1), with their completions."""
    out: dict[str, str] = {}
    for prompt, completion in pretrain_examples(20 * n + 1024, seed=2 * seed + 1):
        if is_heldout(prompt) and len(out) < n:
            out.setdefault(prompt, completion)
    if len(out) < n:
        raise ValueError(f"pretrain: found {len(out)} distinct held-out prompts, asked for {n}")
    return list(out.items())


def lm_loss(config: LlamaConfig, params, batch: dict) -> tuple[jax.Array, dict]:
    """Masked next-token cross-entropy: batch = encode_examples' inputs/targets int32[B, L], mask float32[B, L].
    Returns (mean loss over masked tokens, {"loss", "token_accuracy"})."""
    logits = Llama(config).apply({"params": params}, batch["inputs"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["mask"]
    count = jnp.maximum(jnp.sum(mask), 1.0)
    loss = jnp.sum(ce * mask) / count
    correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    return loss, {"loss": loss, "token_accuracy": jnp.sum(correct * mask) / count}


def make_train_step(config: LlamaConfig):
    """A jitted step(state: TrainState, batch) -> (state, {"loss", "token_accuracy"})."""

    @jax.jit
    def step(state: TrainState, batch: dict):
        grads, metrics = jax.grad(lambda p: lm_loss(config, p, batch), has_aux=True)(state.params)
        return state.apply_gradients(grads), metrics

    return step


def evaluate(config: LlamaConfig, params, examples: list, seq_len: int) -> dict:
    """Held-out metrics: loss and token_accuracy (teacher-forced), exact_match (greedy completion == completion)
    overall and per skill (exact_<skill>)."""
    batch = {k: jnp.asarray(v) for k, v in encode_examples(examples, seq_len).items()}
    _, metrics = _eval_loss(config)(params, batch)
    longest = max(len(c.encode("utf-8")) for _, c in examples)
    completions = greedy_complete(config, params, [p for p, _ in examples], longest + 1)
    hits = defaultdict(list)
    for (prompt, want), got in zip(examples, completions):
        hits[prompt.split(":", 1)[0]].append(got == want)
    out = {"loss": float(metrics["loss"]), "token_accuracy": float(metrics["token_accuracy"]),
           "exact_match": float(np.mean([got == want for (_, want), got in zip(examples, completions)]))}
    out.update({f"exact_{skill}": float(np.mean(hits[skill])) for skill in PRETRAIN_SKILLS if hits[skill]})
    return out


_EVAL_LOSS = {}


def _eval_loss(config: LlamaConfig):
    if config not in _EVAL_LOSS:
        _EVAL_LOSS[config] = jax.jit(lambda params, batch: lm_loss(config, params, batch))
    return _EVAL_LOSS[config]


def pretrain(config: LlamaConfig, workdir: str | Path, *, steps: int = STEPS, batch_size: int = BATCH_SIZE,
             seq_len: int = SEQ_LEN, learning_rate: float = LEARNING_RATE, seed: int = 0,
             warmup_steps: int = WARMUP_STEPS, weight_decay: float = WEIGHT_DECAY, num_train: int = NUM_TRAIN,
             num_eval: int = NUM_EVAL, eval_every: int = 0, devices: int | None = None, progress: bool = True,
             command: str | None = None) -> dict:
    """Pre-train Llama(config) from seeded random weights (resuming from workdir's checkpoints) with AdamW
    (warm-up + cosine decay, gradient clipping 1); returns the trained params (float32 numpy arrays).

    Writes workdir/{checkpoints/, metrics.jsonl, summary.json} and the backbone to workdir/backbone/ (save_backbone).
    summary.json: the settings, final_loss (the last logged training loss), heldout (evaluate() on num_eval held-out
    examples), params (count), seconds, command, the training loss every 250 steps and every held-out evaluation.
    A workdir holding a run with other settings is refused (ValueError)."""
    if config.vocab_size < VOCAB_SIZE:
        raise ValueError(f"pretrain: vocab_size {config.vocab_size} is smaller than the byte tokenizer's {VOCAB_SIZE}")
    if seq_len > config.max_position_embeddings:
        raise ValueError(f"pretrain: seq_len {seq_len} exceeds max_position_embeddings "
                         f"{config.max_position_embeddings}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("num_train", num_train),
                        ("num_eval", num_eval)):
        if value < 1:
            raise ValueError(f"pretrain: {name} must be >= 1, got {value}")
    all_devices = jax.devices()
    n_dev = len(all_devices) if devices is None else int(devices)
    if not 1 <= n_dev <= len(all_devices):
        raise ValueError(f"pretrain: devices={devices}: this run has {len(all_devices)} device(s)")
    if batch_size % n_dev:
        raise ValueError(f"pretrain: batch_size {batch_size} is not divisible by the {n_dev} devices")
    workdir = Path(workdir)
    start = time.perf_counter()
    if progress:
        print(f"pretrain: {config.num_layers} layers, d {config.hidden_size}, {steps} steps of {batch_size} x "
              f"{seq_len} tokens -> {workdir}", file=sys.stderr)
    train, heldout = train_examples(num_train, seed), heldout_examples(num_eval, seed)
    need = fit_seq_len(train + heldout, multiple=1)
    if need > seq_len:
        raise ValueError(f"pretrain: seq_len {seq_len} is too short for the corpus (needs {need})")
    data = encode_examples(train, seq_len)
    # a resumed run must continue the same run (the schedule and the batches depend on all of these)
    check_workdir_config(workdir, config)
    check_workdir_run(workdir, {"steps": steps, "batch_size": batch_size, "seq_len": seq_len,
                                "learning_rate": learning_rate, "warmup_steps": warmup_steps,
                                "weight_decay": weight_decay, "seed": seed, "num_train": num_train,
                                "num_eval": num_eval, "devices": n_dev})

    def batch_fn(step: int) -> dict:
        idx = np.random.default_rng([seed, step]).integers(0, num_train, batch_size)
        return {k: v[idx] for k, v in data.items()}

    tx = make_optimizer("adamw", learning_rate, steps, warmup_steps, weight_decay=weight_decay)
    # one compiled program instead of op-by-op dispatch (seconds on CPU)
    state = TrainState.create(jax.jit(init_backbone, static_argnums=0)(config, jax.random.key(seed)), tx)
    step_fn = make_train_step(config)
    if n_dev > 1:
        step_fn = parallel.one_step_in_flight(step_fn)

    def eval_fn(state, step):
        result = evaluate(config, jax.device_get(state.params), heldout, seq_len)
        if progress:
            print(f"pretrain step {step}: held-out loss {result['loss']:.4f}, exact match {result['exact_match']:.3f}",
                  file=sys.stderr)
        return result

    mesh = parallel.make_mesh((n_dev,), ("data",), devices=all_devices[:n_dev])
    state = fit(state, step_fn, batch_fn, steps=steps, workdir=workdir, log_every=min(50, steps), eval_fn=eval_fn,
                eval_every=eval_every, meta={"seed": seed}, mesh=mesh, progress=progress,
                description="pretrain")
    params = jax.tree.map(np.asarray, jax.device_get(state.params))
    rows = read_metrics(workdir / "metrics.jsonl")
    train_rows = [r for r in rows if r.get("split") == "train"]
    final = [r for r in rows if r.get("split") == "eval" and r["step"] == steps]
    result = ({k: v for k, v in final[-1].items() if k not in ("step", "split", "time")} if final else
              evaluate(config, params, heldout, seq_len))
    save_backbone(workdir / "backbone", config, params)
    summary = {"steps": steps, "batch_size": batch_size, "seq_len": seq_len, "learning_rate": learning_rate,
               "warmup_steps": warmup_steps, "weight_decay": weight_decay, "seed": seed, "num_train": num_train,
               "num_eval": len(heldout), "devices": n_dev,
               "params": int(sum(np.size(p) for p in jax.tree.leaves(params))),
               "final_loss": train_rows[-1]["loss"] if train_rows else None,
               "final_token_accuracy": train_rows[-1]["token_accuracy"] if train_rows else None,
               "heldout": result, "seconds": round(time.perf_counter() - start, 1), "jax": jax.__version__,
               "backend": jax.default_backend(), "command": command,
               "train_curve": [{k: r[k] for k in ("step", "loss", "token_accuracy")} for r in train_rows
                               if r["step"] % 250 == 0 or r is train_rows[-1]],
               "heldout_curve": [{k: v for k, v in r.items() if k not in ("time", "split")} for r in rows
                                 if r.get("split") == "eval"]}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrjax.lora.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, backbone/, summary.json")
    parser.add_argument("--backbone", default="tiny", choices=sorted(BACKBONES),
                        help="the architecture (qrjax.lora.config.BACKBONES)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE)
    parser.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS)
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    parser.add_argument("--num-train", type=int, default=NUM_TRAIN)
    parser.add_argument("--num-eval", type=int, default=NUM_EVAL)
    parser.add_argument("--eval-every", type=int, default=0, help="held-out evaluation every N steps (0: at the end)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", type=int, default=None, help="devices of the data-parallel mesh (default all)")
    args = parser.parse_args(argv)
    command = "python -m qrjax.lora.pretrain " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        pretrain(BACKBONES[args.backbone], args.workdir, steps=args.steps, batch_size=args.batch_size,
                              seq_len=args.seq_len, learning_rate=args.lr, seed=args.seed,
                              warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                              num_train=args.num_train, num_eval=args.num_eval, eval_every=args.eval_every,
                              devices=args.devices, command=command)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(json.loads((Path(args.workdir) / "summary.json").read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
