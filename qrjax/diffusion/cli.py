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

    from qrjax.diffusion.config import get_supergen_config, get_t2i_config
    from qrjax.diffusion.supergen import generate

    direct = args.tide or (args.sdit and args.tiling is None)  # --sdit --tiling shifted: SDiT inside the tiles
    if (args.sdit or args.tide) and args.prompt is None:
        console.fail(prog, "--sdit and --tide are options of text-to-image generation: give --prompt")
    if args.tide and args.tiling is not None:
        console.fail(prog, "--tide corrects attention on the whole canvas; SuperGen's --tiling runs native-size tiles "
                           "that need no correction: drop one of them")
    if (args.sdit or args.tide) and (args.frames != 1 or args.devices != 1):
        console.fail(prog, "--sdit/--tide generate one image on one device (drop --frames/--devices)")
    model = _model(args.model or ("t2i-cpu" if args.prompt is not None else "cpu"))
    label = None
    sdit_keys = [kv for kv in args.set if kv.split("=", 1)[0].strip().startswith(("sdit_", "quickshift_"))]
    other_keys = [kv for kv in args.set if kv not in sdit_keys]
    try:
        if direct:
            from qrjax.diffusion.t2i import generate_image

            config = get_t2i_config(console.overrides(args.set, steps=args.steps, sdit=True if args.sdit else None,
                                                      correction="tide" if args.tide else None))
            image, stats = generate_image(model, config, args.prompt, size=_size(args.size),
                                          key=jax.random.key(args.seed), progress=not args.quiet)
        else:
            sdit = get_t2i_config(sdit_keys) if args.sdit else None
            # SDiT's caches move with the grid by whole tokens: one token per step unless --set says otherwise
            one_token = [f"shift_divisions={model.config.latent_size // model.config.patch}"] if args.sdit else []
            # a prompt is guided against the empty caption, as in direct generation (a --set guidance wins)
            guided = [f"guidance={get_t2i_config().guidance}"] if args.prompt is not None else []
            sets = guided + one_token + (other_keys if args.sdit else args.set)
            config = get_supergen_config(console.overrides(sets, cache_threshold=args.cache_threshold,
                                                           steps=args.steps, tiling=args.tiling))
            if args.prompt is None:
                label = model.label(args.label) if model.config.num_classes else 0
            image, stats = generate(model, config, size=_size(args.size), label=label or 0,
                                    key=jax.random.key(args.seed), frames=args.frames, devices=args.devices,
                                    progress=not args.quiet, prompt=args.prompt, sdit=sdit)
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
               "pipeline": "direct" if direct else "supergen", "seed": args.seed,
               "config": json.loads(json.dumps(config.__dict__)), **stats.to_dict()}
    if args.prompt is not None:
        from qrjax.diffusion.evaluate import clip_score

        unknown = model.unknown_words(args.prompt)
        if unknown:
            console.log(prog, f"words the text model does not know (read as <unk>): {unknown}")
        summary.update(prompt=args.prompt, unknown_words=unknown,
                       clip_score=float(clip_score(model.clip, image[None], [args.prompt])[0]))
    else:
        summary["label"] = label
    human = f"{paths[0]}: {summary['size'][0]}x{summary['size'][1]} in {stats.seconds:.1f} s, " \
            f"{stats.tokens_computed} tokens computed"
    if args.prompt is not None:
        human += f", CLIP score {summary['clip_score']:.1f}"
    console.result(summary, args.json, human)
    return 0


def register(systems) -> None:
    from qrjax.diffusion.config import PRESETS

    parser = systems.add_parser("diffusion", help="SuperGen: tiled, cached, parallel ultra-high-res generation")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the DiT with flow matching (resumes from --workdir)")
    console.add_train_arguments(p, PRESETS)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="generate one image (or video) at --size: SuperGen's tiles, or with --prompt "
                                        "and --sdit/--tide the text-to-image model on the whole canvas")
    p.add_argument("--size", required=True, help="HxW in pixels, e.g. 128x128 (4x the native 32 per side)")
    p.add_argument("--frames", type=int, default=1, help="> 1: a video of that many frames (one PNG each)")
    p.add_argument("--cache-threshold", type=float, default=None, help="region-aware cache threshold (0: off)")
    p.add_argument("--devices", type=int, default=1, help="tile parallelism over this many devices")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default="0", help="class: a training photograph's name, an index, or none")
    p.add_argument("--prompt", default=None, help="a caption: selects the shipped text-to-image model (t2i-cpu) "
                                                  "unless --model names another; the summary adds its clip_score")
    p.add_argument("--sdit", action="store_true", help="SDiT region-adaptive computation: on the whole canvas, or "
                                                       "inside SuperGen's tiles with --tiling")
    p.add_argument("--tide", action="store_true", help="TIDE text anchoring and step-aware attention temperature "
                                                       "above the training size (direct text-to-image)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps of the schedule")
    p.add_argument("--tiling", default=None, choices=("shifted", "blended", "none"))
    p.add_argument("--model", default=None, help="shipped model name (cpu, t2i-cpu) or a path to "
                                                 "<stem>.json/.msgpack; default cpu, or t2i-cpu with --prompt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a SuperGenConfig field (a TextToImageConfig field with --sdit/--tide)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--json", action="store_true", help="print the summary as one compact JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

