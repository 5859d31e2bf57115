"""`qrjax ecc encode|decode|demo`: hex payloads in; encode/decode print one JSON line per input (in input order, each
with status and error), demo prints what happened (or one JSON object with --json)."""

from __future__ import annotations

import numpy as np

from qrjax import console
from qrjax.ecc.bitcode import DEFAULT_WATERMARK_CODE, PRESETS, BitCode, get_code
from qrjax.ecc.hexbits import bits_to_hex, hex_to_bits


def _code(spec: str, prog: str) -> BitCode:
    try:
        return get_code(spec)
    except (ValueError, TypeError) as err:
        console.fail(prog, f"--code {spec}: {err}")


def _parse_all(texts, n_bits, name):
    """Parse every input; keep the errors so each input is reported."""
    parsed, errors = {}, {}
    for i, text in enumerate(texts):
        try:
            parsed[i] = hex_to_bits(text, n_bits, name)
        except ValueError as err:
            errors[i] = str(err)
    return parsed, errors


def _report(code: BitCode, texts, errors: dict, fields: dict) -> int:
    out = console.Records()
    for i, text in enumerate(texts):
        out.write(console.record(input=text, code=code.name, error=errors.get(i), **fields.get(i, {})))
    return out.exit_code


def cmd_encode(args) -> int:
    code = _code(args.code, "qrjax ecc encode")
    parsed, errors = _parse_all(args.payloads, code.payload_bits, "payload")
    fields = {}
    if parsed:
        idx = sorted(parsed)
        codewords = np.asarray(code.encode(np.stack([parsed[i] for i in idx])))
        fields = {i: {"codeword": bits_to_hex(cw)} for i, cw in zip(idx, codewords)}
    return _report(code, args.payloads, errors, fields)


def cmd_decode(args) -> int:
    prog = "qrjax ecc decode"
    code = _code(args.code, prog)
    parsed, errors = _parse_all(args.codewords, code.n_bits, "codeword")
    erasures = None
    if args.erasures:
        try:
            pos = [int(p) for p in args.erasures.split(",")]
        except ValueError:
            console.fail(prog, f"--erasures {args.erasures!r}: expected comma-separated symbol indices")
        if any(not 0 <= p < code.code.n for p in pos):
            console.fail(prog, f"--erasures {args.erasures!r}: symbol indices must be in 0..{code.code.n - 1}")
        erasures = np.zeros(code.code.n, bool)
        erasures[pos] = True
    fields = {}
    if parsed:
        idx = sorted(parsed)
        bits = np.stack([parsed[i] for i in idx])
        er = None if erasures is None else np.broadcast_to(erasures, (len(idx), code.code.n))
        res = code.decode(bits, er)
        fields = {i: {"ok": bool(res.ok[j]), "payload": bits_to_hex(res.payload[j]),
                      "n_corrected": int(res.n_corrected[j]), "codeword": bits_to_hex(res.bits[j])}
                  for j, i in enumerate(idx)}
    return _report(code, args.codewords, errors, fields)


def cmd_demo(args) -> int:
    """Encode a payload, corrupt the codeword with 0..flips bit flips, decode it, and say what happened."""
    import jax

    code = _code(args.code, "qrjax ecc demo")
    key_payload, key_err = jax.random.split(jax.random.key(args.seed))
    payload = np.asarray(jax.random.bernoulli(key_payload, 0.5, (code.payload_bits,)), np.uint8)
    codeword = np.asarray(code.encode(payload))
    flips = np.asarray(jax.random.choice(key_err, code.n_bits, (args.flips,), replace=False))
    trials = []
    for n_flips in range(args.flips + 1):
        noisy = codeword.copy()
        noisy[flips[:n_flips]] ^= 1
        res = code.decode(noisy)
        recovered = bool(np.array_equal(np.asarray(res.payload), payload))
        trials.append({"flips": n_flips, "positions": sorted(flips[:n_flips].tolist()), "received": bits_to_hex(noisy),
                       "ok": bool(res.ok), "n_corrected": int(res.n_corrected), "payload_recovered": recovered})
    summary = {"code": code.name, "description": repr(code.code), "n_bits": code.n_bits,
               "payload_bits": code.payload_bits, "payload": bits_to_hex(payload), "codeword": bits_to_hex(codeword),
               "trials": trials}
    lines = [f"code      {code.name}: {code.code!r}, {code.n_bits} codeword bits, {code.payload_bits} payload bits",
             f"payload   {summary['payload']}", f"codeword  {summary['codeword']}"]
    for t in trials:
        verdict = ("recovered" if t["payload_recovered"] else "WRONG payload") if t["ok"] else \
            ("flagged uncorrectable" + (", payload bits intact" if t["payload_recovered"] else ""))
        lines.append(f"{t['flips']} bit flip(s) at {t['positions']}: received {t['received']} -> ok={t['ok']}, "
                     f"{t['n_corrected']} symbol(s) corrected, {verdict}")
    console.result(summary, args.json, "\n".join(lines))
    return 0


def register(systems) -> None:
    ecc = systems.add_parser("ecc", help="error-correcting codes (Reed-Solomon, BCH)",
                             description="Encode and decode watermark payloads with the qrjax codes.")
    cmds = ecc.add_subparsers(dest="command", required=True, metavar="COMMAND")
    code_help = (f"code: one of {sorted(PRESETS)}, or rs:N,K[,M], bch:N,K[,M] (default {DEFAULT_WATERMARK_CODE})")

    enc = cmds.add_parser("encode", help="payload hex -> codeword hex (one JSON line per input)")
    enc.add_argument("payloads", nargs="+", metavar="HEX")
    enc.add_argument("--code", default=DEFAULT_WATERMARK_CODE, help=code_help)
    enc.set_defaults(func=cmd_encode)

    dec = cmds.add_parser("decode", help="codeword hex -> payload hex, ok, corrections (one JSON line per input)")
    dec.add_argument("codewords", nargs="+", metavar="HEX")
    dec.add_argument("--code", default=DEFAULT_WATERMARK_CODE, help=code_help)
    dec.add_argument("--erasures", default="", help="comma-separated symbol indices to treat as erased")
    dec.set_defaults(func=cmd_decode)

    demo = cmds.add_parser("demo", help="encode, corrupt and decode one payload")
    demo.add_argument("--code", default=DEFAULT_WATERMARK_CODE, help=code_help)
    demo.add_argument("--flips", type=int, default=4, help="corrupt with 0..FLIPS bit flips")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", action="store_true", help="print one compact JSON object")
    demo.set_defaults(func=cmd_demo)
