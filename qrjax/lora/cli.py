"""`qrjax lora tune`: every configuration of a hyperparameter grid on one or more tasks, trained together over one
frozen backbone (ALTO), resumable from --workdir. Prints one result (a summary line, or one compact JSON object with
--json: `configs` with one record per configuration, `bad_lines`, `seconds`, ...); progress (live / exited / queued
adapters) and logs on stderr."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qrjax import console

TUNE = "qrjax lora tune"
_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


def cmd_tune(args) -> int:
    from qrjax.parallel import use_cpu_devices

    if args.devices is not None:
        try:
            use_cpu_devices(args.devices)
        except ValueError as err:
            console.fail(TUNE, str(err))
    from qrjax.lora.backbone import check_vocab, resolve_backbone, resolve_tokenizer
    from qrjax.lora.config import get_tune_config
    from qrjax.lora.tasks import default_grid, load_grid, resolve_task
    from qrjax.lora.train import tune
    from qrjax.train.export import check_workdir_run

    overrides = list(args.set)
    for key, value in (("steps", args.steps), ("seed", args.seed), ("devices", args.devices),
                       ("early_exit", args.early_exit)):
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        config = get_tune_config(args.preset, overrides)
        names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        if not names:
            raise ValueError("--tasks: give at least one task (a built-in name or a .jsonl file)")
        tokenizer = resolve_tokenizer(args.backbone)
        tasks = {}
        for spec in names:
            task = resolve_task(spec, config.seed, tokenizer=tokenizer, num_train=config.num_train,
                                num_val=config.num_val)
            if task.name in tasks:
                raise ValueError(f"--tasks: {spec!r} repeats the task name {task.name!r}")
            tasks[task.name] = task
            if task.bad_lines:
                console.log(TUNE, f"{spec}: passed over {len(task.bad_lines)} malformed line(s); first: "
                                  f"{'; '.join(task.bad_lines[:5])}")
        grid = load_grid(args.grid) if args.grid else default_grid()
        if max(p[1] for p in grid.points) > config.rank_max:
            config = dataclasses.replace(config, rank_max=max(p[1] for p in grid.points))
        backbone = resolve_backbone(args.backbone)
        check_vocab(backbone[0], tokenizer)
        check_workdir_run(args.workdir, {"backbone": str(args.backbone), "tasks": names,
                                         "grid": [list(p) for p in grid.points],
                                         "config": dataclasses.asdict(config) | {"targets": list(config.targets)},
                                         "placement": args.placement})
        summary = tune(backbone, tasks, grid.configs(list(tasks)), config, args.workdir, placement=args.placement,
                       progress=not args.quiet)
    except _ERRORS as err:
        console.fail(TUNE, str(err))
    out = {"workdir": str(args.workdir), "backbone": str(args.backbone), "tasks": list(tasks), **summary}
    best = ", ".join(f"{t} {v['best_val_loss']:.4f}" for t, v in summary["best"].items())
    console.result(out, args.json,
                   f"{TUNE}: {len(summary['configs'])} configurations, {sum(c['status'] == 'exited' for c in summary['configs'])} "
                   f"exited early {summary['exits']}, {summary['samples']} samples, {summary['seconds']:.1f} s; "
                   f"best validation loss: {best}; adapters under {Path(args.workdir) / 'adapters'}")
    return 0


def register(systems) -> None:
    from qrjax.lora.config import TUNE_PRESETS

    parser = systems.add_parser("lora", help="ALTO: many LoRA tuning jobs over one frozen backbone")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tune", help="tune a hyperparameter grid of LoRA adapters (resumes from --workdir)")
    p.add_argument("--backbone", default="tiny",
                   help="'tiny' (the shipped backbone) or a Hugging Face Llama checkpoint folder (config.json + "
                        "safetensors)")
    p.add_argument("--tasks", required=True,
                   help="comma-separated: built-in tasks (arithmetic, reverse, sort, recall) or .jsonl files of "
                        "{\"prompt\": ..., \"completion\": ...} records")
    p.add_argument("--grid", type=Path, default=None,
                   help="a JSON grid: {\"lr\": [...], \"rank\": [...], \"batch\": [...]} or {\"configs\": [...]} "
                        "(default: 4 lr x 3 rank x 2 batch = 24)")
    p.add_argument("--early-exit", dest="early_exit", action="store_true", default=None,
                   help="ALTO's early exit (the preset's default: on)")
    p.add_argument("--no-early-exit", dest="early_exit", action="store_false")
    p.add_argument("--placement", default="queue", choices=("queue", "cp-sat"),
                   help="queue: every device takes configurations of any task in order; cp-sat: tasks get whole "
                        "devices by CP-SAT strip packing, re-planned as tasks complete")
    p.add_argument("--steps", type=int, default=None, help="steps of every configuration (caps the preset's)")
    p.add_argument("--devices", type=int, default=None, help="devices; each owns --set slots=K adapters")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--preset", default="cpu", help=" | ".join(TUNE_PRESETS))
    p.add_argument("--workdir", required=True, type=Path,
                   help="checkpoints, configs.jsonl, adapters/<task>-<index>/ (PEFT files), summary.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TuneConfig field")
    p.add_argument("--json", action="store_true", help="print the summary as one compact JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tune)
