"""`qrjax watermark train|embed|extract`: a thin layer over qrjax.watermark; every input image gets a result or an
error in the JSON output, and one bad file never stops the batch."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from qrjax.ecc.cli import bits_to_hex, hex_to_bits


def _model(spec: str):
    from qrjax.watermark.export import resolve_model

    try:
        return resolve_model(spec)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"qrjax watermark: --model {spec}: {err}") from None


def cmd_train(args) -> int:
    from qrjax.watermark.config import get_config
    from qrjax.watermark.train import train_and_evaluate

    try:
        config = get_config(args.preset, args.set)
    except ValueError as err:
        raise SystemExit(f"qrjax watermark train: {err}") from None
    init = _model(args.init) if args.init else None
    train_and_evaluate(config, args.workdir, data=args.data, init=init)
    print(json.dumps({"workdir": str(args.workdir), "model": str(Path(args.workdir) / "model")}))
    return 0


def _load_all(paths):
    from qrjax.data import load_image

    images, results = {}, []
    for i, p in enumerate(paths):
        try:
            images[i] = load_image(p)
            results.append({"input": str(p)})
        except (FileNotFoundError, ValueError) as err:
            results.append({"input": str(p), "error": str(err)})
    return images, results


def _key_bits(code, text: str | None, name: str, prog: str):
    try:
        return hex_to_bits(text, code.payload_bits, name)
    except ValueError as err:
        raise SystemExit(f"{prog}: {err}") from None


def _embed_targets(src: str, dest: str, fmt: str) -> list[tuple[str, Path]]:
    """(input, output path) pairs: a single image file may go to a file OUT; folders and lists go to OUT/…"""
    from qrjax.data.images import IMAGE_SUFFIXES
    from qrjax.watermark.pipeline import expand_inputs

    src_p, dest_p = Path(src), Path(dest)
    ext = ".jpg" if fmt == "jpeg" else ".png"
    if not src_p.is_dir() and src_p.suffix.lower() not in (".txt", ".lst") and \
            dest_p.suffix.lower() in IMAGE_SUFFIXES:
        return [(src, dest_p)]
    pairs = []
    for p in expand_inputs([src]):
        rel = Path(p).relative_to(src_p) if src_p.is_dir() else Path(Path(p).name)
        pairs.append((p, dest_p / rel.with_suffix(ext)))
    return pairs


def cmd_embed(args) -> int:
    from PIL import Image

    from qrjax.ecc import get_code
    from qrjax.watermark import embed
    from qrjax.watermark.embed import psnr

    prog = "qrjax watermark embed"
    model = _model(args.model)
    code = get_code(args.code)
    if code.n_bits != model.config.bits:
        raise SystemExit(f"{prog}: --code {args.code} makes {code.n_bits}-bit codewords; the model carries "
                         f"{model.config.bits} bits")
    if args.key is None:
        payload = np.random.default_rng().integers(0, 2, code.payload_bits).astype(np.uint8)
    else:
        payload = _key_bits(code, args.key, "--key", prog)
    bits = np.asarray(code.encode(payload[None]))[0]
    pairs = _embed_targets(args.input, args.output, args.format)
    if not pairs:
        raise SystemExit(f"{prog}: no image files in {args.input!r}")
    images, results = _load_all([p for p, _ in pairs])
    for i, img in images.items():
        dest = pairs[i][1]
        try:
            marked = embed(model, img[None], bits, strength=args.strength, refine_steps=args.refine_steps)[0]
            dest.parent.mkdir(parents=True, exist_ok=True)
            is_jpeg = dest.suffix.lower() in (".jpg", ".jpeg")
            Image.fromarray(marked).save(dest, **({"quality": args.quality} if is_jpeg else {}))
            results[i].update(output=str(dest), psnr=round(float(psnr(img[None], marked[None], 255.0)[0]), 2))
        except Exception as err:  # noqa: BLE001 - reported per input, the batch goes on
            results[i]["error"] = f"{type(err).__name__}: {err}"
    for r in results:
        r["status"] = "error" if "error" in r else "ok"
    print(json.dumps({"key": bits_to_hex(payload), "code": code.name, "results": results}, indent=1))
    return 0 if all("error" not in r for r in results) else 1


def cmd_extract(args) -> int:
    import jax

    from qrjax.ecc import get_code
    from qrjax.watermark import detect, extract

    model = _model(args.model)
    code = get_code(args.code)
    key = None
    if args.payload:
        try:
            key = np.asarray(code.encode(hex_to_bits(args.payload, code.payload_bits, "--payload")[None]))[0]
        except ValueError as err:
            raise SystemExit(f"qrjax watermark extract: {err}") from None
    images, results = _load_all(args.images)
    for i, img in images.items():
        try:
            logits = extract(model, img[None], key=jax.random.key(i))
            dec = detect.decode_payload(code, logits, method=args.decoding)
            results[i].update(bits=bits_to_hex((logits[0] > 0).astype(int)), decoded=bool(dec.ok[0]),
                              payload=bits_to_hex(np.asarray(dec.payload[0])))
            if key is not None:
                found, p, m = detect.detect(logits, key[None], fpr=args.fpr)
                results[i].update(watermarked=bool(found[0]), p_value=float(p[0]), matching_bits=int(m[0]))
        except Exception as err:  # noqa: BLE001 - reported per input, the batch goes on
            results[i]["error"] = f"{type(err).__name__}: {err}"
    print(json.dumps({"code": code.name, "results": results}, indent=1))
    return 0 if all("error" not in r for r in results) else 1


def _read_keys(code, path: str, prog: str) -> np.ndarray:
    try:
        lines = [ln.split("#")[0].strip() for ln in Path(path).read_text().splitlines()]
    except OSError as err:
        raise SystemExit(f"{prog}: --keys {path}: {err}") from None
    keys = [_key_bits(code, ln, f"--keys {path}, line {i + 1}:", prog) for i, ln in enumerate(lines) if ln]
    if not keys:
        raise SystemExit(f"{prog}: --keys {path}: no keys in the file")
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


def cmd_detect(args) -> int:
    import sys

    from tqdm.auto import tqdm

    from qrjax.ecc import get_code
    from qrjax.watermark.pipeline import Decision, FullImageDetector, Plan, TileDetector, expand_inputs

    prog = "qrjax watermark detect"
    code = get_code(args.code)
    keys = None
    if args.key:
        keys = np.asarray(code.encode(_key_bits(code, args.key, "--key", prog)[None]))
    elif args.keys:
        keys = _read_keys(code, args.keys, prog)
    decision = Decision(code, keys, fpr=args.fpr, decoding=args.decoding)
    paths = expand_inputs(args.paths)
    if args.resume and not args.out:
        raise SystemExit(f"{prog}: --resume needs --out (the results file to continue)")
    todo = paths
    if args.resume:
        done = _finished(Path(args.out))
        todo = []
        for p in paths:
            if done[p] > 0:
                done[p] -= 1
            else:
                todo.append(p)
    if args.baseline:
        detector = FullImageDetector(_model(args.baseline_model), decision)
        run = lambda ps, progress: detector.run(ps, args.batch or 32, progress=progress)  # noqa: E731
    else:
        try:
            cell = tuple(int(v) for v in args.cell.split(","))
            detector = TileDetector(_model(args.model), decision, cell=cell, draft=not args.no_draft,
                                    preprocess=args.preprocess)
        except ValueError as err:
            raise SystemExit(f"{prog}: {err}") from None
        if args.workers:
            workers = tuple(int(v) for v in args.workers.split(","))
            if len(workers) != 3 or min(workers) < 1:
                raise SystemExit(f"{prog}: --workers takes three positive counts READ,DEVICE,WRITE")
            b = args.batch or 64
            plan = Plan(workers, (b, b, b))
        else:
            plan = detector.warmup(todo, args.budget, batch_hint=args.batch or 256) if todo else None
            if plan is not None and args.batch:
                plan = Plan(plan.workers, (args.batch,) * 3, plan.costs, "adaptive, --batch fixed")
        if args.verbose and plan is not None:
            print(plan.describe(), file=sys.stderr)
        run = lambda ps, progress: detector.run(ps, plan, progress=progress)  # noqa: E731
    sink = open(args.out, "a" if args.resume else "w") if args.out else sys.stdout
    counts = {"ok": 0, "error": 0, "detected": 0}
    try:
        with tqdm(total=len(todo), desc="detect", unit="img", file=sys.stderr, disable=args.quiet) as bar:
            for r in (run(todo, bar.update) if todo else ()):
                sink.write(json.dumps(r) + "\n")
                sink.flush()
                counts[r["status"]] += 1
                counts["detected"] += bool(r["detected"])
    finally:
        if sink is not sys.stdout:
            sink.close()
    print(f"{prog}: {len(todo)} inputs ({len(paths) - len(todo)} already done): {counts['ok']} read, "
          f"{counts['error']} errors, {counts['detected']} detected", file=sys.stderr)
    return 1 if counts["error"] else 0


def cmd_bench(args) -> int:
    import tempfile

    from qrjax.ecc import get_code
    from qrjax.watermark.benchmark import make_dataset, throughput
    from qrjax.watermark.pipeline import Decision, FullImageDetector, TileDetector

    model, baseline = _model(args.model), _model(args.baseline_model)
    code = get_code(args.code)
    variants = ("baseline", "system", "decode_bound") + (("tiled", "tiled+overlap", "reader_bound")
                                                        if args.all_variants else ())
    with tempfile.TemporaryDirectory(prefix="qrjax-bench-") as tmp:
        ds = make_dataset(tmp, model, code, args.images, args.size, args.format, unique=min(args.images, 256),
                          progress=not args.json)
        decision = Decision(code, ds["key"][None])
        res = throughput(ds["paths"], TileDetector(model, decision), FullImageDetector(baseline, decision),
                         budget=args.budget, batch=args.batch, repeats=args.repeats, variants=variants,
                         verbose=args.verbose and not args.json)
    ips = res["images_per_s"]
    summary = {"baseline_images_per_s": ips["baseline"], "system_images_per_s": ips["system"],
               "decode_bound_images_per_s": ips["decode_bound"], "speedup": ips["system"] / ips["baseline"],
               "system_fraction_of_decode_bound": ips["system"] / ips["decode_bound"], "images": args.images,
               "size": args.size, "format": args.format, "repeats": args.repeats,
               "plan": res["plan_adaptive"], "all_images_per_s": ips}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.images} {args.format} images {args.size}x{args.size}, median of {args.repeats} rounds:")
        for v, x in ips.items():
            print(f"  {v:14s} {x:9.1f} images/s  ({x / ips['baseline']:.2f}x baseline)")
        print(f"  system / baseline = {summary['speedup']:.2f}x; system / decode-only bound = "
              f"{summary['system_fraction_of_decode_bound']:.2f}")
    return 0


def cmd_demo(args) -> int:
    from qrjax.watermark.demo import run_demo

    run_demo(args.out, per_cell=args.per_cell, negatives=args.negatives, seed=args.seed, model_name=args.model,
             baseline_name=args.baseline_model, repeats=args.repeats)
    return 0


def register_demo(parser) -> None:
    parser.add_argument("--out", default="demo_output", help="folder for the images, records and plot")
    parser.add_argument("--model", default="cpu")
    parser.add_argument("--baseline-model", default="cpu-full")
    parser.add_argument("--per-cell", type=int, default=8, help="watermarked images per (size, attack)")
    parser.add_argument("--negatives", type=int, default=48, help="clean images")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=cmd_demo)


def register(systems) -> None:
    from qrjax.config import add_train_arguments
    from qrjax.watermark.config import PRESETS

    parser = systems.add_parser("watermark", help="QRMark watermark networks: train, embed, extract")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the encoder/extractor (resumes from --workdir)")
    add_train_arguments(p, PRESETS)
    p.add_argument("--init", default=None, help="start from this model (shipped name or <stem>.json): fine-tuning")
    p.set_defaults(func=cmd_train)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="cpu", help="shipped model name or a path to <stem>.json/.msgpack")
    common.add_argument("--code", default="qrmark-bch", help="ECC preset or rs:N,K / bch:N,K")
    common.add_argument("images", nargs="+", help="image files")

    p = sub.add_parser("embed", help="watermark an image, a folder (recursively) or a .txt list of paths")
    p.add_argument("input", help="image file, folder, or .txt/.lst file of paths")
    p.add_argument("output", help="output image file (for one input image) or folder")
    p.add_argument("--key", default=None, help="payload as hex (8 digits for the 32-bit presets); default random")
    p.add_argument("--model", default="cpu", help="shipped model name or a path to <stem>.json/.msgpack")
    p.add_argument("--code", default="qrmark-bch", help="ECC preset or rs:N,K / bch:N,K")
    p.add_argument("--format", default="png", choices=("png", "jpeg"), help="format of files written to a folder")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--refine-steps", type=int, default=None,
                   help="embed-time refinement steps against the extractor (default: the model's refine_steps)")
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
    p.add_argument("--no-draft", action="store_true", help="decode JPEG at full scale")
    p.add_argument("--preprocess", default="auto", choices=("auto", "kernel", "reference"))
    p.add_argument("--verbose", action="store_true", help="print the allocation plan")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("bench", help="images/s of the baseline, the system and the decode-only bound")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--format", default="jpeg", choices=("jpeg", "png"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--model", default="cpu")
    p.add_argument("--baseline-model", default="cpu-full")
    p.add_argument("--code", default="qrmark-bch")
    p.add_argument("--budget", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--all-variants", action="store_true", help="also tiled, tiled+overlap and the reader bound")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("extract", parents=[common], help="read and decode the payload of images")
    p.add_argument("--payload", default=None, help="a known payload: also test for it at --fpr")
    p.add_argument("--fpr", type=float, default=1e-6)
    p.add_argument("--decoding", default="chase", choices=("hard", "gmd", "chase"))
    p.set_defaults(func=cmd_extract)

    register_demo(sub.add_parser("demo", help="the detection demo (also `qrjax demo`)"))
