"""`qrjax diffusion train|generate`: a thin layer over qrjax.diffusion (training the DiT, SuperGen generation).
Both have a single result: a summary line, or one compact JSON object with --json (see qrjax.console)."""

from __future__ import annotations

import json
from pathlib import Path

from qrjax import console


def _model(spec: str):
    from qrjax.diffusion.export import resolve_model

    try:
        return resolve_model(spec)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"qrjax diffusion: --model {spec}: {err}") from None


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        console.fail("qrjax diffusion generate", f"--size {text!r}: expected HxW in pixels, e.g. 128x128")
    return h, w


def cmd_train(args) -> int:
    from qrjax.diffusion.config import get_config
    from qrjax.diffusion.train import train_and_evaluate

    return console.train_command("qrjax diffusion train", args, get_config, train_and_evaluate)


def cmd_generate(args) -> int:
    prog = "qrjax diffusion generate"
    console.use_devices(prog, args.devices)
    import jax
    from PIL import Image

    from qrjax.diffusion.config import get_supergen_config
    from qrjax.diffusion.supergen import generate

    model = _model(args.model)
    overrides = console.overrides(args.set, cache_threshold=args.cache_threshold, steps=args.steps,
                                  tiling=args.tiling)
    try:
        config = get_supergen_config(overrides)
        label = model.label(args.label) if model.config.num_classes else 0
        image, stats = generate(model, config, size=_size(args.size), label=label, key=jax.random.key(args.seed),
                                frames=args.frames, devices=args.devices, progress=not args.quiet)
    except ValueError as err:
        console.fail(prog, str(err))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.frames > 1:  # one PNG per frame: OUT_f000.png, ...
        paths = [out.with_name(f"{out.stem}_f{i:03d}{out.suffix or '.png'}") for i in range(len(image))]
        for p, frame in zip(paths, image):
            Image.fromarray(frame).save(p)
    else:
        paths = [out]
        Image.fromarray(image).save(out)
    summary = {"out": [str(p) for p in paths], "size": list(image.shape[-3:-1]), "frames": args.frames,
               "label": label, "seed": args.seed, "config": json.loads(json.dumps(config.__dict__)),
               **stats.to_dict()}
    console.result(summary, args.json, f"{paths[0]}: {summary['size'][0]}x{summary['size'][1]} in {stats.seconds:.1f} s, "
                   f"{stats.model_calls} model calls, {stats.tiles_skipped} tiles skipped, peak {stats.peak_bytes} B")
    return 0


def register(systems) -> None:
    from qrjax.diffusion.config import PRESETS

    parser = systems.add_parser("diffusion", help="SuperGen: tiled, cached, parallel ultra-high-res generation")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the DiT with flow matching (resumes from --workdir)")
    console.add_train_arguments(p, PRESETS)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="generate one image (or video) at --size with SuperGen")
    p.add_argument("--size", required=True, help="HxW in pixels, e.g. 128x128 (4x the native 32 per side)")
    p.add_argument("--frames", type=int, default=1, help="> 1: a video of that many frames (one PNG each)")
    p.add_argument("--cache-threshold", type=float, default=None, help="region-aware cache threshold (0: off)")
    p.add_argument("--devices", type=int, default=1, help="tile parallelism over this many devices")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default="0", help="class: a training photograph's name, an index, or none")
    p.add_argument("--steps", type=int, default=None, help="denoising steps of the schedule")
    p.add_argument("--tiling", default=None, choices=("shifted", "blended", "none"))
    p.add_argument("--model", default="cpu", help="shipped model name or a path to <stem>.json/.msgpack")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a SuperGenConfig field")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--json", action="store_true", help="print the summary as one compact JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

