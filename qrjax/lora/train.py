"""The ALTO engine: every configuration of a hyperparameter grid on one or more tasks, trained as LoRA adapters of one
frozen backbone in fixed slots (`qrjax.lora.batched`), with early exit, back-fill and cross-task placement.

Each engine step trains every live slot once (one program: the base matmul over all slots' tokens, grouped LoRA
matmuls, per-adapter AdamW). Then, per configuration:
- its training loss goes into its early-exit monitor (EMA); at its warm-up boundary (5 % of its steps), every
  `eval_every` steps and at its end it is evaluated on its task's validation split (mean token cross-entropy on the
  completions), and ALTO's rules may exit it: "underperforming" once ⌈0.25·n⌉ of its task's n configurations have
  a lower validation loss at their warm-up boundaries than it had at its own (at its boundary, or later when the
  others report: ALTO keeps the top quarter), "diverged" or "overfit" from the 4th evaluation; the adapter with the
  best validation loss is kept (on device, per slot) and exported;
- a finished or exited configuration frees its slot, which is back-filled from the queue at once: greedy admission
  under the device's capacity (`schedule.admit`, same batch size first), without recompiling.
The step's buffer holds `capacity` sequences per device; a step whose sequences fit a smaller bucket
(capacity·k/buckets) runs that program instead (the queue's tail, small batches, validation passes), so padding
costs little; each bucket compiles once.
Devices: every device owns `slots` slots (adapter-per-device parallelism). With `placement="cp-sat"` each task is
given whole devices by `schedule.plan` (CP-SAT strip packing over the engine's step clock: a task needs g devices for
an estimated number of steps), re-planned whenever a task completes; a device only admits configurations of the task
placed on it. Otherwise every device admits from one queue (all tasks, in order).

Results: workdir/configs.jsonl (one record per configuration as it ends), workdir/adapters/<task>-<index>/ (PEFT's
adapter_model.safetensors + adapter_config.json, the best-validation adapter), workdir/summary.json. The run is
resumable: the slots' arrays and the host state are checkpointed every `checkpoint_every` engine steps.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from qrjax.lora import batched, schedule
from qrjax.lora.config import LlamaConfig, TuneConfig
from qrjax.lora.early_exit import EarlyExitConfig, Monitor, Underperforming, warmup_steps
from qrjax.lora.tasks import GridPoint, Task
from qrjax.parallel import make_mesh
from qrjax.train.checkpoint import Checkpointer
from qrjax.train.optim import make_optimizer

STATUSES = ("queued", "running", "finished", "exited")


@dataclasses.dataclass
class Job:
    """One configuration's progress (host side)."""

    point: GridPoint
    status: str = "queued"
    exit_reason: str | None = None
    steps: int = 0
    samples: int = 0
    slot: int | None = None
    best_val_loss: float = math.inf
    best_step: int = 0
    evals: list = dataclasses.field(default_factory=list)  # [step, ema train loss, val loss]
    monitor: Monitor | None = None

    def record(self) -> dict:
        p = self.point
        return {"task": p.task, "index": p.index, "lr": p.lr, "rank": p.rank, "batch": p.batch,
                "status": self.status, "exit_reason": self.exit_reason, "steps": self.steps, "samples": self.samples,
                "best_val_loss": None if not math.isfinite(self.best_val_loss) else self.best_val_loss,
                "best_step": self.best_step, "evals": self.evals}


def _monitor_state(m: Monitor) -> dict:
    return {k: v for k, v in vars(m).items() if k != "config"}


def _restore_monitor(config: EarlyExitConfig, state: dict) -> Monitor:
    m = Monitor(config)
    for k, v in state.items():
        setattr(m, k, v)
    return m


class _Data:
    """Every task's encoded splits at one common sequence length (the longest task's)."""

    def __init__(self, tasks: dict[str, Task]):
        self.seq_len = max(t.seq_len for t in tasks.values())
        self.train = {n: t.encode("train", self.seq_len) for n, t in tasks.items()}
        self.val = {n: t.encode("val", self.seq_len) for n, t in tasks.items()}

    def batch(self, job: Job, seed: int) -> dict:
        """The job's batch for its next step: deterministic in (seed, configuration, step), so a resumed run sees the
        batches an uninterrupted one would."""
        arrays = self.train[job.point.task]
        rng = np.random.default_rng([seed, job.point.index, job.steps])
        idx = rng.choice(arrays["inputs"].shape[0], job.point.batch, replace=False)
        return {k: v[idx] for k, v in arrays.items()}


def save_peft_adapter(directory: str | Path, adapter: dict, rank: int, alpha: float, targets: Sequence[str],
                      meta: dict | None = None) -> Path:
    """One adapter (padded to rank_max) in PEFT's layout: adapter_model.safetensors with
    base_model.model.model.layers.<i>.<self_attn|mlp>.<proj>.lora_A.weight [r, d_in] and lora_B.weight [d_out, r],
    and adapter_config.json (r, lora_alpha, target_modules)."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer, groups in adapter.items():
        i = int(layer.split("_")[1])
        for group, projs in groups.items():
            for proj, ab in projs.items():
                stem = f"base_model.model.model.layers.{i}.{group}.{proj}"
                tensors[f"{stem}.lora_A.weight"] = np.ascontiguousarray(np.asarray(ab["a"])[:, :rank].T)
                tensors[f"{stem}.lora_B.weight"] = np.ascontiguousarray(np.asarray(ab["b"])[:rank].T)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(rank), "lora_alpha": float(alpha),
              "target_modules": list(targets), "lora_dropout": 0.0, "bias": "none", **(meta or {})}
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return directory


@functools.partial(jax.jit, donate_argnums=0)
def _keep_best(best, adapters, mask):
    """best[i] = adapters[i] where mask[i] (a slot's new best validation loss); leaves keep their sharding."""
    return jax.tree.map(lambda b, a: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), best, adapters)


def make_tx(config: TuneConfig):
    """The per-adapter optimiser at learning rate 1 (the shared trainer's AdamW, constant schedule, clipping per
    adapter); each slot's update is then scaled by its own learning rate, which is what AdamW at that rate does
    (optax scales the decayed-weight term by the learning rate too). Constant: the schedule's length does not
    matter, and one length keeps one (cached) transformation, static metadata of the state, for every run."""
    return make_optimizer("adamw", 1.0, 2, 0, end_learning_rate=1.0, weight_decay=config.weight_decay,
                          grad_clip=config.grad_clip or None)


def measure_capacity(steps_fn: batched.Steps, config: TuneConfig, model_config: LlamaConfig, base, tx, seq_len: int,
                     batches: Sequence[int] = (4, 8, 16, 32)) -> tuple[int, schedule.MemoryModel, list]:
    """ALTO's memory model on this run's own program: the train step compiled for a buffer of B sequences per device
    for each B in `batches`, its bytes per device from XLA's accounting (`schedule.measure_memory`), the fit
    M(B) = k0 + k1·B·L, and the largest B within config.memory_budget_mb with the safety margin
    -> (capacity, model, points)."""
    num = config.devices * config.slots
    state = jax.device_put(batched.init_slots(config, model_config, num, tx), steps_fn.state_sharding)
    zeros = np.zeros(num, np.float32)

    def build(b):
        buf, seqs = batched.pack([None] * num, config.devices, b, seq_len)
        return steps_fn.train.lower(base, state, buf, batched.SlotInputs(seqs, zeros, zeros)).compile()

    points = schedule.measure_memory(build, batches, seq_len)
    model = schedule.MemoryModel.fit(points)
    return model.capacity(config.memory_budget_mb * 2**20, seq_len, config.memory_margin), model, points


def tune(backbone: tuple[LlamaConfig, Any], tasks: dict[str, Task], points: Sequence[GridPoint], config: TuneConfig,
         workdir: str | Path, *, placement: str = "queue", progress: bool = True, max_engine_steps: int | None = None,
         export: bool = True) -> dict:
    """Train every configuration in `points` (tasks[point.task] must exist); returns the summary (also written to
    workdir/summary.json): configs (one record each, in `points` order), per-task best, samples, seconds,
    engine_steps, bad_lines. max_engine_steps stops early (for tests of resume); placement: "queue" or "cp-sat"."""
    t0 = time.perf_counter()
    model_config, base = backbone
    if placement not in ("queue", "cp-sat"):
        raise ValueError(f"placement {placement!r}: choose 'queue' or 'cp-sat'")
    for p in points:
        if p.task not in tasks:
            raise ValueError(f"configuration {p.label}: unknown task {p.task!r}; tasks: {sorted(tasks)}")
        if p.rank > config.rank_max:
            raise ValueError(f"configuration {p.label}: rank {p.rank} > rank_max {config.rank_max}")
        if p.batch > config.capacity and not config.memory_budget_mb:
            raise ValueError(f"configuration {p.label}: batch {p.batch} > capacity {config.capacity} sequences")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    devices, per_device = config.devices, config.slots
    num_slots = devices * per_device
    if len(jax.devices()) < devices:
        raise ValueError(f"devices {devices}: only {len(jax.devices())} available")
    mesh = make_mesh((devices,), (batched.AXIS,), devices=jax.devices()[:devices])
    tx = make_tx(config)
    steps_fn = batched.make_steps(config, model_config, mesh, tx)
    data = _Data(tasks)
    seq_len = data.seq_len
    ee = EarlyExitConfig(enabled=config.early_exit, ema_alpha=config.ema_alpha)
    warm = warmup_steps(config.steps, ee.warmup_fraction)
    counts = {t: sum(p.task == t for p in points) for t in tasks}
    underperf = {t: Underperforming(max(counts[t], 1), ee) for t in tasks}
    jobs = [Job(p, monitor=Monitor(ee)) for p in points]
    slot_job: list[int | None] = [None] * num_slots
    device_task: list[str | None] = [None] * devices
    running_tasks: dict[str, schedule.Placement] = {}
    done_tasks: set[str] = set()
    freed_batch: list[int | None] = [None] * devices  # the batch of the configuration that last left a device
    engine_step = 0

    base = jax.device_put(base, steps_fn.base_sharding)
    memory = None
    if config.memory_budget_mb > 0:
        capacity, fitted, measured = measure_capacity(steps_fn, config, model_config, base, tx, seq_len)
        # never more than every slot at the largest batches needs: a larger buffer would only be padding
        capacity = min(capacity, sum(sorted((p.batch for p in points), reverse=True)[:per_device]))
        memory = {"k0": fitted.k0, "k1": fitted.k1, "r2": fitted.r_squared(measured), "points": measured,
                  "budget_mb": config.memory_budget_mb, "margin": config.memory_margin, "capacity": capacity}
        largest = max(p.batch for p in points)
        if capacity < largest:
            raise ValueError(f"memory_budget_mb {config.memory_budget_mb}: the memory model (k0 {fitted.k0:.0f} B, "
                             f"k1 {fitted.k1:.1f} B per token) fits {capacity} sequences per device, fewer than the "
                             f"largest batch {largest}")
        config = dataclasses.replace(config, capacity=capacity)
    state = jax.device_put(batched.init_slots(config, model_config, num_slots, tx), steps_fn.state_sharding)
    best = jax.device_put(jax.tree.map(np.zeros_like, jax.device_get(state.adapters)), steps_fn.state_sharding.adapters)
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=1)
    if ckpt.latest_step is not None:
        restored, meta = ckpt.restore({"state": state, "best": best})
        state, best = restored["state"], restored["best"]
        engine_step = int(meta["engine_step"])
        for job, rec in zip(jobs, meta["jobs"]):
            job.status, job.exit_reason, job.steps, job.samples = rec["status"], rec["exit_reason"], rec["steps"], \
                rec["samples"]
            job.slot, job.best_val_loss, job.best_step, job.evals = rec["slot"], rec["best_val_loss"], \
                rec["best_step"], rec["evals"]
            job.monitor = _restore_monitor(ee, rec["monitor"])
        slot_job = meta["slot_job"]
        device_task = meta["device_task"]
        done_tasks = set(meta["done_tasks"])
        freed_batch = meta["freed_batch"]
        running_tasks = {k: schedule.Placement(k, v[0], v[1], tuple(v[2])) for k, v in meta["running_tasks"].items()}
        for t, losses in meta["underperforming"].items():
            for cid, loss in losses:
                underperf[t].report(cid, loss)
    ended_file = workdir / "configs.jsonl"
    if engine_step == 0 and ended_file.exists():
        ended_file.unlink()

    val_sets = data.val
    by_index = {j.point.index: j for j in jobs}
    # buffer sizes (sequences per device): the smallest that holds a step's sequences is used, so a half-empty
    # buffer (the queue's tail, small batches) costs half; each size compiles once, on first use
    sizes = sorted({-(-config.capacity * k // config.buckets) for k in range(1, config.buckets + 1)})

    def rows_for(used_per_device: Sequence[int]) -> int:
        return next(c for c in sizes if c >= max(used_per_device))

    def task_work(t):  # sequences x steps still to train, the scheduler's duration estimate
        return sum(j.point.batch * (config.steps - j.steps) for j in jobs if j.point.task == t and j.status in
                   ("queued", "running"))

    planned: dict[str, schedule.Placement] = {}  # the latest plan's tasks not started yet

    def replan():
        """CP-SAT placement of the tasks not yet started around the running ones (at the start and whenever a task
        completes); starts those due now."""
        pending = [t for t in tasks if t not in done_tasks and t not in running_tasks and task_work(t) > 0]
        if not pending:
            return
        total = sum(task_work(t) for t in pending) or 1
        specs = []
        for t in pending:
            g = max(1, min(devices, round(devices * task_work(t) / total)))
            specs.append(schedule.TaskSpec(t, g, task_work(t) / (g * config.capacity)))
        plan = schedule.plan(specs, devices, fixed=list(running_tasks.values()), now=float(engine_step),
                             time_limit_s=5.0, workers=1)
        planned.clear()
        planned.update({p.name: p for p in plan.placements if p.name not in running_tasks})
        start_due()

    def start_due():
        """Start the planned tasks whose start time has come and whose devices are free."""
        busy = {d for p in running_tasks.values() for d in p.devices}
        for name, p in sorted(planned.items(), key=lambda kv: kv[1].start):
            if p.start > engine_step + 1e-9 or busy & set(p.devices):
                continue
            running_tasks[name] = p
            del planned[name]
            busy |= set(p.devices)
            for d in p.devices:
                device_task[d] = name

    task_order = list(dict.fromkeys(j.point.task for j in jobs))

    def admit():
        """Fill free slots, device by device: tasks in order (a task's configurations before the next task's, so
        they reach their warm-up boundaries together and the top-quarter rule acts before kept ones finish; later
        tasks fill what is left), within a task `schedule.admit`'s greedy rule (descending batch under the
        capacity, the batch size that just left first)."""
        nonlocal state
        for d in range(devices):
            own = range(d * per_device, (d + 1) * per_device)
            free = [s for s in own if slot_job[s] is None]
            task = device_task[d]
            if not free or (placement == "cp-sat" and task is None):
                continue
            live = [jobs[slot_job[s]].point.batch for s in own if slot_job[s] is not None]
            for t in task_order if task is None else [task]:
                queue = [j for j in jobs if j.status == "queued" and j.point.task == t]
                if not queue:
                    continue
                picks = schedule.admit([j.point for j in queue], live, config.capacity, len(free),
                                       prefer_batch=freed_batch[d])
                for slot, k in zip(list(free), picks):
                    job = queue[k]
                    job.status, job.slot = "running", slot
                    slot_job[slot] = jobs.index(job)
                    free.remove(slot)
                    live.append(job.point.batch)
                    state = steps_fn.reset(state, jnp.int32(slot),
                                           jax.random.key(config.seed * 100003 + job.point.index),
                                           jnp.int32(job.point.rank))
                if not free:
                    break

    def slot_arrays():
        scale = np.zeros(num_slots, np.float32)
        lr = np.zeros(num_slots, np.float32)
        for s, j in enumerate(slot_job):
            if j is not None:
                p = jobs[j].point
                scale[s], lr[s] = config.alpha_ratio, p.lr  # alpha = alpha_ratio * r  =>  s = alpha / r
        return scale, lr

    def evaluate(due: list[int]) -> dict[int, float]:
        """Validation loss of the jobs in `due` (their slots): their validation sequences packed back to back, each
        device's up to its capacity per pass; the other slots are empty groups."""
        scale, lr = slot_arrays()
        sums = np.zeros(num_slots)
        toks = np.zeros(num_slots)
        offset = {s: 0 for s in due}
        left = {s: val_sets[jobs[slot_job[s]].point.task]["inputs"].shape[0] for s in due}
        while any(left.values()):
            per_slot = [None] * num_slots
            used = [0] * devices
            for s in sorted(due):  # slot order: each device's groups lie in its block in slot order
                d = s // per_device
                n = min(left[s], config.capacity - used[d])
                if n <= 0:
                    continue
                arr = val_sets[jobs[slot_job[s]].point.task]
                per_slot[s] = {k: v[offset[s]:offset[s] + n] for k, v in arr.items()}
                offset[s] += n
                left[s] -= n
                used[d] += n
            buf, seqs = batched.pack(per_slot, devices, rows_for(used), seq_len)
            s_sum, s_tok = steps_fn.evaluate(base, state.adapters, buf, batched.SlotInputs(seqs, scale, lr))
            sums += np.asarray(s_sum)
            toks += np.asarray(s_tok)
        return {s: float(sums[s] / max(toks[s], 1.0)) for s in due}

    def end(job: Job, status: str, reason: str | None):
        nonlocal best
        job.status, job.exit_reason = status, reason
        slot = job.slot
        # a configuration without a finite evaluation (a NaN loss before its first) has no adapter worth keeping;
        # best[slot] would still hold the slot's previous occupant's
        if export and math.isfinite(job.best_val_loss):
            adapter = jax.tree.map(lambda x: np.asarray(x[slot]), best)  # one slot's slice leaves the device
            save_peft_adapter(workdir / "adapters" / f"{job.point.task}-{job.point.index}", adapter, job.point.rank,
                              config.alpha_ratio * job.point.rank, config.targets,
                              {"qrjax": {**job.record(), "best_step": job.best_step}})
        slot_job[slot] = None
        job.slot = None
        freed_batch[slot // per_device] = job.point.batch
        with ended_file.open("a") as f:
            f.write(json.dumps(job.record()) + "\n")
        t = job.point.task
        if placement == "cp-sat" and all(j.status in ("finished", "exited") for j in jobs if j.point.task == t):
            done_tasks.add(t)
            running_tasks.pop(t, None)
            for d in range(devices):
                if device_task[d] == t:
                    device_task[d] = None
            replan()

    def save_checkpoint():
        meta = {"engine_step": engine_step, "slot_job": slot_job, "device_task": device_task,
                "freed_batch": freed_batch,
                "done_tasks": sorted(done_tasks),
                "running_tasks": {k: [p.start, p.end, list(p.devices)] for k, p in running_tasks.items()},
                "underperforming": {t: [[c, v] for c, v in u.losses.items()] for t, u in underperf.items()},
                "jobs": [{"status": j.status, "exit_reason": j.exit_reason, "steps": j.steps, "samples": j.samples,
                          "slot": j.slot, "best_val_loss": j.best_val_loss, "best_step": j.best_step,
                          "evals": j.evals, "monitor": _monitor_state(j.monitor)} for j in jobs]}
        ckpt.save(engine_step, {"state": state, "best": best}, json.loads(json.dumps(meta, default=float)),
                  force=True)

    if placement == "cp-sat":
        replan()
    bar = tqdm(total=len(jobs), desc="lora tune", disable=not progress or None, dynamic_ncols=True)
    bar.update(sum(j.status in ("finished", "exited") for j in jobs))
    try:
        while any(j.status in ("queued", "running") for j in jobs):
            if max_engine_steps is not None and engine_step >= max_engine_steps:
                break
            if placement == "cp-sat":
                start_due()
            admit()
            live = [s for s in range(num_slots) if slot_job[s] is not None]
            if not live:
                raise RuntimeError("lora tune: configurations are queued but none fits a device (capacity "
                                   f"{config.capacity}) or no task is placed")
            per_slot = [None] * num_slots
            for s in live:
                per_slot[s] = data.batch(jobs[slot_job[s]], config.seed)
            used = [sum(per_slot[s]["inputs"].shape[0] for s in live if s // per_device == d) for d in range(devices)]
            buf, seqs = batched.pack(per_slot, devices, rows_for(used), seq_len)
            scale, lr = slot_arrays()
            state, losses = steps_fn.train(base, state, buf, batched.SlotInputs(seqs, scale, lr))
            losses = np.asarray(losses)
            engine_step += 1
            due, diverged = [], []
            for s in live:
                job = jobs[slot_job[s]]
                job.steps += 1
                job.samples += job.point.batch
                if job.monitor.train(float(losses[s])) is not None:
                    diverged.append(s)
                elif job.steps == warm or job.steps % config.eval_every == 0 or job.steps == config.steps:
                    due.append(s)
            for s in diverged:
                end(jobs[slot_job[s]], "exited", "diverged")
                bar.update(1)
            if due:
                vals = evaluate(due)
                mask = np.zeros(num_slots, bool)
                for s, v in vals.items():
                    job = jobs[slot_job[s]]
                    if v < job.best_val_loss:
                        job.best_val_loss, job.best_step = v, job.steps
                        mask[s] = True
                if mask.any():
                    best = _keep_best(best, state.adapters, jnp.asarray(mask))
                reported = set()
                for s, v in vals.items():
                    job = jobs[slot_job[s]]
                    job.evals.append([job.steps, job.monitor.ema, v])
                    reason = None
                    if job.steps == warm and config.early_exit:
                        reported.add(job.point.task)
                        if not underperf[job.point.task].report(job.point.index, v):
                            reason = "underperforming"
                    if reason is None and (job.steps % config.eval_every == 0 or job.steps == config.steps):
                        reason = job.monitor.evaluate(job.steps, v)
                    if reason is not None:
                        end(job, "exited", reason)
                        bar.update(1)
                    elif job.steps >= config.steps:
                        end(job, "finished", None)
                        bar.update(1)
                # a configuration kept at its warm-up boundary that has since fallen out of its task's top quarter
                # (ceil(0.25 n) configurations reported lower warm-up losses after it) exits now
                for t in sorted(reported):
                    for idx in sorted(underperf[t].dominated()):
                        if by_index[idx].status == "running":
                            end(by_index[idx], "exited", "underperforming")
                            bar.update(1)
            live_n = sum(j.status == "running" for j in jobs)
            bar.set_postfix(live=live_n, exited=sum(j.status == "exited" for j in jobs),
                            queued=sum(j.status == "queued" for j in jobs))
            if engine_step % config.checkpoint_every == 0:
                save_checkpoint()
        if max_engine_steps is not None and any(j.status in ("queued", "running") for j in jobs):
            save_checkpoint()
    finally:
        bar.close()
        ckpt.wait()
        ckpt.close()
    summary = _summary(jobs, tasks, engine_step, time.perf_counter() - t0, config, placement)
    summary["memory_model"] = memory
    if not any(j.status in ("queued", "running") for j in jobs):
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _summary(jobs, tasks, engine_step, seconds, config, placement) -> dict:
    best = {}
    for t in tasks:
        vals = [(j.best_val_loss, j.point.index) for j in jobs if j.point.task == t and math.isfinite(j.best_val_loss)]
        if vals:
            v, idx = min(vals)
            best[t] = {"best_val_loss": v, "index": idx}
    return {"configs": [j.record() for j in jobs], "best": best,
            "samples": int(sum(j.samples for j in jobs)), "engine_steps": engine_step,
            "exits": {r: sum(j.exit_reason == r for j in jobs) for r in ("diverged", "overfit", "underperforming")},
            "bad_lines": [line for t in tasks.values() for line in t.bad_lines], "seconds": round(seconds, 3),
            "early_exit": config.early_exit, "slots": config.slots, "devices": config.devices, "placement": placement,
            "capacity": config.capacity, "shard_backbone": config.shard_backbone}
