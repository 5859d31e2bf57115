"""`qrjax dlrm train`: a thin layer over `qrjax.dlrm.train.train_and_evaluate`. A single result: a summary line, or
one compact JSON object with --json (see qrjax.console); progress and logs on stderr."""

from __future__ import annotations

from pathlib import Path

from qrjax import console

PROG = "qrjax dlrm train"


def cmd_train(args) -> int:
    from qrjax.parallel import native_stdout_to_stderr

    console.use_devices(PROG, args.devices)
    from qrjax.dlrm.config import get_config
    from qrjax.dlrm.train import train_and_evaluate

    overrides = console.overrides(args.set, compress=args.compress, eps=args.eps, steps=args.steps, seed=args.seed)
    if args.compress_backward:
        overrides.append("compress_backward=true")
    workdir = args.out or args.workdir
    if workdir is None:
        console.fail(PROG, "--out DIR (checkpoints, metrics, the exported model and summary.json) is required")
    try:
        config = get_config(args.preset, overrides)
        with native_stdout_to_stderr():  # gloo's connection logs (multi-process runs) stay off stdout
            summary = train_and_evaluate(config, workdir, args.data, devices=args.devices, progress=not args.quiet)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        console.fail(PROG, str(err))
    from qrjax.parallel import process_index

    if process_index() != 0:  # process 0 reports for the run
        return 0
    if summary["bad_lines"]:
        console.log(PROG, f"skipped {summary['bad_lines']} malformed line(s) of {args.data}; first line numbers: "
                          f"{summary['bad_line_numbers']}")
    summary = {"workdir": str(workdir), "preset": config.name, **summary}
    ratio = summary["wire_bytes_per_step"] / max(summary["uncompressed_wire_bytes_per_step"], 1)
    console.result(summary, args.json,
                   f"{PROG}: {summary['steps']} steps, AUC {summary['auc']:.4f}, log loss {summary['logloss']:.4f}, "
                   f"wire bytes/step {summary['wire_bytes_per_step']} ({ratio:.3f} of float32), "
                   f"{summary['seconds']:.1f} s; model {Path(workdir) / 'model'}.json")
    return 0


def register(systems) -> None:
    from qrjax.dlrm.config import COMPRESS, PRESETS

    parser = systems.add_parser("dlrm", help="DLRM training with an error-bounded compressed embedding all-to-all")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train on synthetic Criteo-like data or a Criteo TSV file (resumes from --out)")
    p.add_argument("--preset", default="cpu", help=" | ".join(PRESETS))
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' or a Criteo Kaggle/Terabyte TSV file (.gz allowed): label, 13 integers, 26 hex")
    p.add_argument("--compress", default=None, choices=COMPRESS, help="the forward all-to-all's payload")
    p.add_argument("--eps", type=float, default=None, help="the range-relative bound of --compress fixed")
    p.add_argument("--compress-backward", action="store_true",
                   help="also compress the gradients' all-to-all (beyond the paper)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--devices", type=int, default=None, help="devices in the mesh (default: all)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="run directory: checkpoints, metrics, model, summary")
    p.add_argument("--workdir", type=Path, default=None, help="same as --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a DLRMConfig field")
    p.add_argument("--json", action="store_true", help="print the summary as one compact JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
