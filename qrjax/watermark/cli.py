"""`qrjax watermark train|embed|extract`: a thin layer over qrjax.watermark; every input image gets a result or an
error in the JSON output, and one bad file never stops the batch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from qrjax.ecc.cli import bits_to_hex, hex_to_bits


def _model(spec: str):
    from qrjax.watermark import load_pretrained
    from qrjax.watermark.train import load_model

    try:
        return load_pretrained(spec) if "/" not in spec and not spec.endswith((".json", ".msgpack")) \
            else load_model(Path(spec).with_suffix(""))
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


def cmd_embed(args) -> int:
    from PIL import Image

    from qrjax.ecc import get_code
    from qrjax.watermark import embed
    from qrjax.watermark.embed import psnr

    model = _model(args.model)
    code = get_code(args.code)
    if code.n_bits != model.config.bits:
        raise SystemExit(f"qrjax watermark embed: --code {args.code} makes {code.n_bits}-bit codewords; the model "
                         f"carries {model.config.bits} bits")
    try:
        payload = hex_to_bits(args.payload, code.payload_bits, "--payload")
    except ValueError as err:
        raise SystemExit(f"qrjax watermark embed: {err}") from None
    bits = np.asarray(code.encode(payload[None]))[0]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, results = _load_all(args.images)
    for i, img in images.items():
        try:
            marked = embed(model, img[None], bits, strength=args.strength, refine_steps=args.refine_steps)[0]
            dest = out_dir / (Path(args.images[i]).stem + ".png")
            Image.fromarray(marked).save(dest)
            results[i].update(output=str(dest), psnr=round(float(psnr(img[None], marked[None], 255.0)[0]), 2))
        except Exception as err:  # noqa: BLE001 - reported per input, the batch goes on
            results[i]["error"] = f"{type(err).__name__}: {err}"
    print(json.dumps({"payload": bits_to_hex(payload), "code": code.name, "results": results}, indent=1))
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


def cmd_demo(args) -> int:
    """Embed a payload in held-out bundled photographs, edit them, read one tile each, decode."""
    import jax

    from qrjax.data import bundled_source
    from qrjax.ecc import get_code
    from qrjax.watermark import attacks, detect, embed, extract
    from qrjax.watermark.embed import psnr

    model = _model(args.model)
    code = get_code(args.code)
    size = model.config.working_size
    images = bundled_source("val", area=(0.15, 1.0)).sample(np.random.default_rng(args.seed), size, args.n_images)
    rng = np.random.default_rng(args.seed + 1)
    payloads = rng.integers(0, 2, (len(images), code.payload_bits)).astype(np.uint8)
    keys = np.asarray(code.encode(payloads))
    marked = embed(model, images, keys)
    print(f"model {args.model}: {model.config.bits} bits, {model.config.tile}-px tile of a {size}-px image; "
          f"{len(images)} held-out images, PSNR {float(np.mean(psnr(images, marked, 255.0))):.1f} dB")
    print(f"{'attack':26s} {'bit acc':>8s} {'payload ok':>10s} {'detected@1e-6':>14s}")
    for i, name in enumerate(attacks.EVAL_ATTACKS):
        edited = np.stack([attacks.eval_attack(name, im) for im in marked])
        logits = extract(model, edited, key=jax.random.key(i))
        found, _, m = detect.detect(logits, keys, fpr=1e-6)
        dec = detect.decode_payload(code, logits, method="chase")
        ok = np.asarray(dec.ok) & np.all(np.asarray(dec.payload) == payloads, axis=-1)
        print(f"{name:26s} {np.mean(np.asarray(m)) / code.n_bits:8.3f} {ok.mean():10.2f} "
              f"{np.mean(np.asarray(found)):14.2f}")
    return 0


def register(systems) -> None:
    parser = systems.add_parser("watermark", help="QRMark watermark networks: train, embed, extract")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the encoder/extractor (resumes from --workdir)")
    p.add_argument("--preset", default="cpu", help="paper | cpu | tiny")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--data", type=Path, default=None, help="image folder (default: images bundled in the wheels)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--init", default=None, help="start from this model (shipped name or <stem>.json): fine-tuning")
    p.set_defaults(func=cmd_train)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="cpu", help="shipped model name or a path to <stem>.json/.msgpack")
    common.add_argument("--code", default="qrmark-bch", help="ECC preset or rs:N,K / bch:N,K")
    common.add_argument("images", nargs="+", help="image files")

    p = sub.add_parser("embed", parents=[common], help="watermark images with an ECC-encoded payload")
    p.add_argument("--payload", required=True, help="payload as hex (8 digits for the 32-bit presets)")
    p.add_argument("--out", required=True, help="output folder (PNG)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--refine-steps", type=int, default=None,
                   help="embed-time refinement steps against the extractor (default: the model's refine_steps)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("extract", parents=[common], help="read and decode the payload of images")
    p.add_argument("--payload", default=None, help="a known payload: also test for it at --fpr")
    p.add_argument("--fpr", type=float, default=1e-6)
    p.add_argument("--decoding", default="chase", choices=("hard", "gmd", "chase"))
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("demo", help="embed, attack, extract one tile and decode on held-out bundled images")
    p.add_argument("--model", default="cpu")
    p.add_argument("--code", default="qrmark-bch")
    p.add_argument("--n-images", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
