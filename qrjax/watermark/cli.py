"""`qrjax watermark train|embed|detect|bench|demo`: a thin layer over qrjax.watermark.

embed and detect are batch jobs: one JSON line per input on stdout, in input order, each with status and error; one
bad file never stops the batch, and files a folder scan passes over are named on stderr (see qrjax.console)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from qrjax import console
from qrjax.ecc.hexbits import bits_to_hex, hex_to_bits


def _model(spec: str):
    from qrjax.watermark.export import resolve_model

    try:
        return resolve_model(spec)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"qrjax watermark: --model {spec}: {err}") from None


def cmd_train(args) -> int:
    from qrjax.watermark.config import get_config
    from qrjax.watermark.train import train_and_evaluate

    return console.train_command("qrjax watermark train", args, get_config, train_and_evaluate,
                                 init=_model(args.init) if args.init else None)


def _code(spec: str, prog: str):
    from qrjax.ecc import get_code

    try:
        return get_code(spec)
    except (ValueError, TypeError) as err:
        console.fail(prog, f"--code {spec}: {err}")


def _key_bits(code, text: str | None, name: str, prog: str):
    try:
        return hex_to_bits(text, code.payload_bits, name)
    except ValueError as err:
        console.fail(prog, str(err))


def _embed_targets(src: str, dest: str, fmt: str, prog: str) -> list[tuple[str, Path]]:
    """(input, output path) pairs: a single image file may go to a file OUT; folders and lists go to OUT/…"""
    from qrjax.data.images import IMAGE_SUFFIXES, LIST_SUFFIXES, scan_inputs

    src_p, dest_p = Path(src), Path(dest)
    ext = ".jpg" if fmt == "jpeg" else ".png"
    if not src_p.is_dir() and src_p.suffix.lower() not in LIST_SUFFIXES and \
            dest_p.suffix.lower() in IMAGE_SUFFIXES:
        return [(src, dest_p)]
    scan = scan_inputs([src])
    console.passed_over(prog, scan.skipped)
    pairs = []
    for p in scan.paths:
        rel = Path(p).relative_to(src_p) if src_p.is_dir() else Path(Path(p).name)
        pairs.append((p, dest_p / rel.with_suffix(ext)))
    return pairs


def cmd_embed(args) -> int:
    from PIL import Image
    from tqdm.auto import tqdm

    from qrjax.data import load_image
    from qrjax.metrics import psnr
    from qrjax.watermark import embed

    prog = "qrjax watermark embed"
    model = _model(args.model)
    code = _code(args.code, prog)
    if code.n_bits != model.config.bits:
        console.fail(prog, f"--code {args.code} makes {code.n_bits}-bit codewords; the model carries "
                           f"{model.config.bits} bits")
    if args.key is None:  # a fresh payload; --seed makes it reproducible
        payload = np.random.default_rng(args.seed).integers(0, 2, code.payload_bits).astype(np.uint8)
    else:
        payload = _key_bits(code, args.key, "--key", prog)
    key = bits_to_hex(payload)
    bits = np.asarray(code.encode(payload[None]))[0]
    pairs = _embed_targets(args.input, args.output, args.format, prog)
    if not pairs:
        console.fail(prog, f"no image files in {args.input!r}")
    out = console.Records()
    for src, dest in tqdm(pairs, desc="embed", unit="img", file=sys.stderr, disable=args.quiet):
        fields = {"path": src, "output": None, "key": key, "code": code.name, "psnr": None}
        try:
            img = load_image(src)
            marked = embed(model, img[None], bits, strength=args.strength, refine_steps=args.refine_steps)[0]
            dest.parent.mkdir(parents=True, exist_ok=True)
            is_jpeg = dest.suffix.lower() in (".jpg", ".jpeg")
            Image.fromarray(marked).save(dest, **({"quality": args.quality} if is_jpeg else {}))
            fields.update(output=str(dest), psnr=round(float(psnr(img, marked, data_range=255.0)), 2))
            out.write(console.record(**fields))
        except Exception as err:  # noqa: BLE001 - reported per input, the batch goes on
            out.write(console.record(**fields, error=f"{type(err).__name__}: {err}"))
    console.log(prog, f"{len(pairs)} inputs: {out.counts['ok']} watermarked, {out.counts['error']} errors; key {key} "
                      f"({code.name})")
    return out.exit_code


def _read_keys(code, path: str, prog: str) -> np.ndarray:
    try:
        lines = [ln.split("#")[0].strip() for ln in Path(path).read_text().splitlines()]
    except OSError as err:
        console.fail(prog, f"--keys {path}: {err}")
    keys = [_key_bits(code, ln, f"--keys {path}, line {i + 1}:", prog) for i, ln in enumerate(lines) if ln]
    if not keys:
        console.fail(prog, f"--keys {path}: no keys in the file")
    return np.asarray(code.encode(np.stack(keys)))


def _finished(out: Path) -> dict[str, int]:
    """How many finished records (ok or error) each path already has in a results file. A last line cut by an
    interruption is removed, so appended records start on a line of their own."""
    from collections import Counter

    done: Counter = Counter()
    if out.is_file():
        data = out.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(out, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        for line in out.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the interruption: that input runs again
            if r.get("status") in ("ok", "error"):
                done[r["path"]] += 1
    return done


def _local_mesh(devices: int | None, prog: str):
    """A mesh over this process's first `devices` devices (all of them by default): detection runs per process."""
    import jax

    from qrjax import parallel

    local = jax.local_devices()
    if devices is not None and not 1 <= devices <= len(local):
        console.fail(prog, f"--devices {devices}: this process has {len(local)} device(s)")
    return parallel.make_mesh(devices=local[:devices or len(local)])


def _use_sync(model, wanted: bool, prog: str, say: bool = True) -> bool:
    """The cascade is on when wanted (no --no-sync) and the model can synchronise; when it cannot, say so once on
    stderr (where `say`) and detect with the tile alone."""
    from qrjax.watermark.pipeline import cascade_unavailable

    why = cascade_unavailable(model) if wanted else None
    if why and say:
        console.log(prog, f"synchronised stage off, detecting with the tile alone: {why}")
    return wanted and why is None


def cmd_detect(args) -> int:
    from tqdm.auto import tqdm

    from qrjax import parallel
    from qrjax.data import scan_inputs
    from qrjax.watermark.pipeline import Decision, FullImageDetector, Plan, TileDetector

    prog = "qrjax watermark detect"
    code = _code(args.code, prog)
    keys = None
    if args.key:
        keys = np.asarray(code.encode(_key_bits(code, args.key, "--key", prog)[None]))
    elif args.keys:
        keys = _read_keys(code, args.keys, prog)
    decision = Decision(code, keys, fpr=args.fpr, decoding=args.decoding)
    if args.resume and not args.out:
        console.fail(prog, "--resume needs --out (the results file to continue)")
    # Across processes (qrjax --num-processes N ...) process 0 alone scans the inputs and reads and writes --out, and
    # its list of inputs decides; each process runs its contiguous share and process 0 writes every record, in input
    # order, at the end.
    first, multi = parallel.process_index() == 0, parallel.process_count() > 1
    paths = todo = []
    if first:
        scan = scan_inputs(args.paths)
        console.passed_over(prog, scan.skipped)
        paths = todo = scan.paths
        if args.resume:
            done = _finished(Path(args.out))
            todo = []
            for p in paths:
                if done[p] > 0:
                    done[p] -= 1
                else:
                    todo.append(p)
    paths, todo = parallel.broadcast_from_first([paths, todo])
    mine = parallel.process_share(todo)
    if args.baseline:
        detector = FullImageDetector(_model(args.baseline_model), decision)
        run = lambda ps, progress: detector.run(ps, args.batch or 32, progress=progress)  # noqa: E731
    else:
        model = _model(args.model)
        use_sync = keys is not None and _use_sync(model, not args.no_sync, prog, say=first)
        try:
            cell = tuple(int(v) for v in args.cell.split(","))
            detector = TileDetector(model, decision, cell=cell, draft=not args.no_draft, preprocess=args.preprocess,
                                    mesh=_local_mesh(args.devices, prog), sync=use_sync)
        except ValueError as err:
            console.fail(prog, str(err))
        if args.workers:
            try:
                workers = tuple(int(v) for v in args.workers.split(","))
            except ValueError:
                workers = ()
            if len(workers) != 3 or min(workers) < 1:
                console.fail(prog, f"--workers {args.workers!r}: expected three positive counts READ,DEVICE,WRITE")
            b = args.batch or 64
            plan = Plan(workers, (b, b, b))
        else:
            plan = detector.warmup(mine, args.budget, batch_hint=args.batch or 256) if mine else None
            if plan is not None and args.batch:
                plan = Plan(plan.workers, (args.batch,) * 3, plan.costs, "adaptive, --batch fixed")
        if args.verbose and plan is not None:
            print(plan.describe(), file=sys.stderr)
        run = lambda ps, progress: detector.run(ps, plan, progress=progress)  # noqa: E731
    sink = (open(args.out, "a" if args.resume else "w") if args.out else sys.stdout) if first else None
    out = console.Records(sink) if first else None
    counts = {"ok": 0, "error": 0, "detected": 0}

    def emit(r):
        if out is not None:
            out.write(r)
        counts[r["status"]] += 1
        counts["detected"] += bool(r["detected"])

    mine_records = []
    try:
        with tqdm(total=len(mine), desc="detect", unit="img", file=sys.stderr, disable=args.quiet) as bar:
            for r in (run(mine, bar.update) if mine else ()):
                if multi:
                    mine_records.append(r)
                else:
                    emit(r)
        if multi:  # process 0 writes (and counts) every process's records; the others count their own
            gathered = parallel.gather_to_first(mine_records)
            for r in (gathered if first else mine_records):
                emit(r)
    finally:
        if sink is not None and sink is not sys.stdout:
            sink.close()
    if first:
        where = f" on {parallel.process_count()} processes, {len(mine)} here" if multi else ""
        head = f"{len(todo)} inputs ({len(paths) - len(todo)} already done){where}"
    else:
        head = f"process {parallel.process_index()} of {parallel.process_count()}: {len(mine)} of {len(todo)} inputs"
    console.log(prog, f"{head}: {counts['ok']} read, {counts['error']} errors, {counts['detected']} detected")
    return 1 if counts["error"] else 0


def cmd_bench(args) -> int:
    import tempfile

    from qrjax.watermark.benchmark import make_dataset, throughput
    from qrjax.watermark.pipeline import Decision, FullImageDetector, TileDetector

    prog = "qrjax watermark bench"
    model, baseline = _model(args.model), _model(args.baseline_model)
    code = _code(args.code, prog)
    use_sync = _use_sync(model, not args.no_sync, prog)
    variants = ("baseline", "system", "decode_bound", "compute_bound") + (
        ("tiled", "tiled+overlap", "reader_bound") if args.all_variants else ())
    with tempfile.TemporaryDirectory(prefix="qrjax-bench-") as tmp:
        ds = make_dataset(tmp, model, code, args.images, args.size, args.format, unique=min(args.images, 256),
                          progress=not args.json)
        decision = Decision(code, ds["key"][None])
        res = throughput(ds["paths"], TileDetector(model, decision, sync=use_sync),
                         FullImageDetector(baseline, decision),
                         budget=args.budget, batch=args.batch, repeats=args.repeats, variants=variants,
                         verbose=args.verbose and not args.json)
    ips = res["images_per_s"]
    summary = {"baseline_images_per_s": ips["baseline"], "system_images_per_s": ips["system"],
               "decode_bound_images_per_s": ips["decode_bound"], "speedup": res["speedup_vs_baseline"]["system"],
               "system_fraction_of_decode_bound": res["system_fraction_of_decode_bound"],
               "compute_bound_images_per_s": ips["compute_bound"],
               "shared_core_bound_images_per_s": res["shared_core_bound_images_per_s"],
               "bound": res["bound"], "system_fraction_of_bound": res["system_fraction_of_bound"],
               "sync": use_sync, "images": args.images, "size": args.size, "format": args.format,
               "repeats": args.repeats, "plan": res["plan_adaptive"], "all_images_per_s": ips}
    lines = [f"{args.images} {args.format} images {args.size}x{args.size}, median of {args.repeats} rounds "
             f"(system: {'tile then sync cascade' if use_sync else 'tile alone'}):"]
    lines += [f"  {v:14s} {x:9.1f} images/s  ({x / ips['baseline']:.2f}x baseline)" for v, x in ips.items()]
    lines.append(f"  shared-core bound 1 / (1/decode + 1/compute) = {summary['shared_core_bound_images_per_s']:.1f} "
                 f"images/s")
    lines.append(f"  system / baseline = {summary['speedup']:.2f}x; system / {res['bound_description']} = "
                 f"{summary['system_fraction_of_bound']:.2f}")
    console.result(summary, args.json, "\n".join(lines))
    return 0


def cmd_demo(args) -> int:
    from qrjax.watermark.demo import run_demo

    run_demo(args.out, per_cell=args.per_cell, negatives=args.negatives, seed=args.seed, model_name=args.model,
             baseline_name=args.baseline_model, repeats=args.repeats, sync=not args.no_sync)
    return 0


def register_demo(parser) -> None:
    parser.add_argument("--out", default="demo_output", help="folder for the images, records and plot")
    parser.add_argument("--model", default="cpu")
    parser.add_argument("--baseline-model", default="cpu-full")
    parser.add_argument("--per-cell", type=int, default=8, help="watermarked images per (size, attack)")
    parser.add_argument("--negatives", type=int, default=48, help="clean images")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved timing rounds (each one pass of both "
                                                               "pipelines over every file; the table is the last one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sync", action="store_true", help="detect with the tile alone (no synchronised stage)")
    parser.set_defaults(func=cmd_demo)


def register(systems) -> None:
    from qrjax.watermark.config import PRESETS

    parser = systems.add_parser("watermark", help="QRMark watermarking: train, embed, detect, bench, demo")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the encoder/extractor (resumes from --workdir)")
    console.add_train_arguments(p, PRESETS)
    p.add_argument("--init", default=None, help="start from this model (shipped name or <stem>.json): fine-tuning")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="watermark an image, a folder (recursively) or a .txt list of paths: one JSON "
                                     "line per input")
    p.add_argument("input", help="image file, folder, or .txt/.lst file of paths")
    p.add_argument("output", help="output image file (for one input image) or folder")
    p.add_argument("--key", default=None, help="payload as hex (8 digits for the 32-bit presets); default random")
    p.add_argument("--seed", type=int, default=None, help="seed of the random payload when --key is not given")
    p.add_argument("--model", default="cpu", help="shipped model name or a path to <stem>.json/.msgpack")
    p.add_argument("--code", default="qrmark-bch", help="ECC preset or rs:N,K / bch:N,K")
    p.add_argument("--format", default="png", choices=("png", "jpeg"), help="format of files written to a folder")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--refine-steps", type=int, default=None,
                   help="embed-time refinement steps against the extractor (default: the model's refine_steps)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("detect", help="the tiled detection system (or --baseline): one JSON line per input")
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or .txt/.lst files of paths")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--key", default=None, help="the payload (hex) to test for")
    group.add_argument("--keys", default=None, help="file of payloads (hex, one a line): identify which one")
    p.add_argument("--fpr", type=float, default=1e-6, help="false-positive rate (family-wise with --keys)")
    p.add_argument("--out", default=None, help="results file (JSONL, streamed); default stdout")
    p.add_argument("--resume", action="store_true", help="skip inputs already finished in --out, append the rest")
    p.add_argument("--baseline", action="store_true", help="the sequential full-image pipeline instead")
    p.add_argument("--model", default="cpu", help="tile model (shipped name or <stem>.json)")
    p.add_argument("--baseline-model", default="cpu-full", help="full-image model for --baseline")
    p.add_argument("--code", default="qrmark-bch", help="ECC preset or rs:N,K / bch:N,K")
    p.add_argument("--decoding", default="hard", choices=("hard", "gmd", "chase"))
    p.add_argument("--cell", default="0,0", help="grid cell ROW,COL read from every image")
    p.add_argument("--budget", type=int, default=max(3, 2 * (os.cpu_count() or 1)),
                   help="workers shared by the stages (the allocator's S_max)")
    p.add_argument("--workers", default=None, help="fix the plan: READ,DEVICE,WRITE workers (skips the warm-up)")
    p.add_argument("--batch", type=int, default=None, help="fix the micro-batch size")
    p.add_argument("--devices", type=int, default=None, help="split micro-batches over this many of the process's "
                                                             "devices (default: all)")
    p.add_argument("--no-draft", action="store_true", help="decode JPEG at full scale")
    p.add_argument("--no-sync", action="store_true", help="the tile alone at --fpr: no synchronised second stage for "
                                                          "inputs the tile does not detect (default: the cascade, "
                                                          "each stage at fpr / 2, when the model can synchronise)")
    p.add_argument("--preprocess", default="auto", choices=("auto", "kernel", "reference"))
    p.add_argument("--verbose", action="store_true", help="print the allocation plan")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("bench", help="images/s of the baseline, the system and its bounds (decode-only, compute-only, "
                                     "shared-core)")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--format", default="jpeg", choices=("jpeg", "png"))
    p.add_argument("--json", action="store_true", help="print one compact JSON object")
    p.add_argument("--model", default="cpu")
    p.add_argument("--baseline-model", default="cpu-full")
    p.add_argument("--code", default="qrmark-bch")
    p.add_argument("--budget", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--all-variants", action="store_true", help="also tiled, tiled+overlap and the reader bound")
    p.add_argument("--no-sync", action="store_true", help="the system without its synchronised stage")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_bench)

    register_demo(sub.add_parser("demo", help="the detection demo (also `qrjax demo`)"))
