"""`qrjax clip train` and `qrjax clip eval`: thin layers over `qrjax.clip.train.train_and_evaluate` and
`qrjax.clip.evaluate`. Each prints a single result: a summary line, or one compact JSON object with --json (see
qrjax.console); progress and logs on stderr."""

from __future__ import annotations

from pathlib import Path

from qrjax import console

TRAIN = "qrjax clip train"
EVAL = "qrjax clip eval"
_DATA_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


def _csv_kwargs(args) -> dict:
    return {"csv_img_key": args.csv_img_key, "csv_caption_key": args.csv_caption_key,
            "csv_separator": args.csv_separator}


def _report_bad(prog: str, data, count: int, names: list[str]) -> None:
    if count:
        console.log(prog, f"skipped {count} unusable sample(s) of {data}; first: {'; '.join(names[:5])}")


def cmd_train(args) -> int:
    from qrjax.parallel import native_stdout_to_stderr, process_index

    console.use_devices(TRAIN, args.devices)
    from qrjax.clip.config import get_config
    from qrjax.clip.export import resolve_model
    from qrjax.clip.train import train_and_evaluate

    overrides = console.overrides(args.set, loss=args.loss, batch_size=args.batch, steps=args.steps, seed=args.seed,
                                  reduction=args.reduction, noise=args.noise)
    try:
        config = get_config(args.preset, overrides)
        ref = resolve_model(args.ref) if args.ref else None
        if ref is not None and config.loss != "drrho" and not config.jest_keep:
            console.log(TRAIN, f"--ref {args.ref} is used by the drrho loss and JEST selection (--set jest_keep=F) "
                               f"only; this run ignores it")
        with native_stdout_to_stderr():  # gloo's connection logs (multi-process runs) stay off stdout
            summary = train_and_evaluate(config, args.workdir, args.data, devices=args.devices, ref=ref,
                                         ref_name=str(args.ref) if args.ref else None, ref_mode=args.ref_mode,
                                         progress=not args.quiet, **_csv_kwargs(args))
    except _DATA_ERRORS as err:
        console.fail(TRAIN, str(err))
    if process_index() != 0:  # process 0 reports for the run
        return 0
    _report_bad(TRAIN, args.data, summary["bad_samples"], summary["bad_names"])
    summary = {"workdir": str(args.workdir), "model": str(Path(args.workdir) / "model"), "preset": config.name,
               **summary}
    extra = (f", zero-shot top-1 {summary['zero_shot_top1']:.3f}" if "zero_shot_top1" in summary else "")
    console.result(summary, args.json,
                   f"{TRAIN}: {config.loss}, {summary['steps']} steps ({summary['samples_seen']} samples), loss "
                   f"{summary['loss']:.4f}, tau {summary['tau']:.4f}{extra}, retrieval R@1 i2t "
                   f"{summary['retrieval_r1_i2t']:.3f} / t2i {summary['retrieval_r1_t2i']:.3f}, "
                   f"{summary['seconds']:.1f} s; model {summary['model']}.json")
    return 0


def cmd_eval(args) -> int:
    from qrjax.clip.evaluate import eval_sets, evaluate_sets
    from qrjax.clip.export import resolve_model

    try:
        model = resolve_model(args.model)
        sets = eval_sets(args.data, model.config.image_size, seed=args.seed, per_class=args.per_class,
                         max_pairs=args.max_pairs, **_csv_kwargs(args))
        result = evaluate_sets(model, sets)
    except _DATA_ERRORS as err:
        console.fail(EVAL, str(err))
    out = {"model": str(args.model), "data": str(args.data), "zero_shot_top1": result.get("zero_shot_top1"),
           **result, "pairs": 0 if sets.ret_images is None else len(sets.ret_images),
           "classes": len(sets.class_names)}
    zs = "n/a (no classes)" if out["zero_shot_top1"] is None else f"{out['zero_shot_top1']:.3f}"
    console.result(out, args.json,
                   f"{EVAL}: zero-shot top-1 {zs}; retrieval over {out['pairs']} pairs R@1 i2t "
                   f"{out['retrieval_r1_i2t']:.3f}, t2i {out['retrieval_r1_t2i']:.3f}, R@5 i2t "
                   f"{out['retrieval_r5_i2t']:.3f}, t2i {out['retrieval_r5_t2i']:.3f}")
    return 0


def _add_data_arguments(p) -> None:
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (captioned scenes), a CSV/TSV file of image paths and captions, or webdataset "
                        ".tar shards (a shard or a folder of them: key.jpg + key.txt)")
    p.add_argument("--csv-img-key", default="filepath", help="the CSV column of image paths (relative to the file)")
    p.add_argument("--csv-caption-key", default="title", help="the CSV column of captions")
    p.add_argument("--csv-separator", default=None, help="the CSV separator (default: tab for .tsv, else sniffed)")


def register(systems) -> None:
    from qrjax.clip.config import LOSSES, PRESETS, REDUCTIONS
    from qrjax.clip.train import REF_MODES

    parser = systems.add_parser("clip", help="FastCLIP / DRRho-CLIP contrastive image-text training and evaluation")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a CLIP (resumes from --workdir); exports --workdir/model.{json,msgpack}")
    p.add_argument("--loss", default=None, choices=LOSSES, help="default: the preset's (fastclip-v3)")
    p.add_argument("--ref", default=None, metavar="MODEL",
                   help="the reference model of --loss drrho or of JEST selection (--set jest_keep=0.2): a "
                        "shipped name (cpu) or a model file")
    p.add_argument("--ref-mode", default="cache", choices=REF_MODES,
                   help="reference features computed once for all samples (cache) or in every step (online)")
    p.add_argument("--reduction", default=None, choices=REDUCTIONS,
                   help="gradient reduction across devices (default: fastclip)")
    p.add_argument("--preset", default="cpu", help=" | ".join(PRESETS))
    _add_data_arguments(p)
    p.add_argument("--noise", type=float, default=None, help="synthetic data: fraction of mismatched captions")
    p.add_argument("--batch", type=int, default=None, help="global batch size")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--devices", type=int, default=None, help="devices in the mesh (default: all)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workdir", required=True, type=Path, help="checkpoints, metrics, the exported model, summary")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a CLIPConfig field")
    p.add_argument("--json", action="store_true", help="print the summary as one compact JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="zero-shot classification and image-text retrieval of a model")
    e.add_argument("--model", default="cpu", help="a shipped model (cpu) or a model file's stem/.json/.msgpack")
    _add_data_arguments(e)
    e.add_argument("--per-class", type=int, default=50, help="synthetic: zero-shot images per held-out class")
    e.add_argument("--max-pairs", type=int, default=1000, help="user data: retrieval over its first N pairs")
    e.add_argument("--seed", type=int, default=0, help="synthetic: the evaluation images' seed")
    e.add_argument("--json", action="store_true", help="print the result as one compact JSON object")
    e.set_defaults(func=cmd_eval)
