"""`qrjax ecc encode|decode|demo`: hex payloads in, JSON out; every input gets a result or an error."""

from __future__ import annotations

import argparse
import json
import string

import numpy as np

from qrjax.ecc.bitcode import DEFAULT_WATERMARK_CODE, PRESETS, BitCode, get_code


def hex_to_bits(text: str, n_bits: int, name: str) -> np.ndarray:
    """Hex string (optional 0x) holding exactly ceil(n_bits / 4) digits -> uint8[n_bits], MSB first."""
    digits = text.strip().lower().removeprefix("0x")
    if not digits or any(c not in string.hexdigits for c in digits):
        raise ValueError(f"{name} {text!r} is not a hexadecimal string")
    want = -(-n_bits // 4)
    if len(digits) != want:
        raise ValueError(f"{name} {text!r} has {len(digits)} hex digits; this code needs {want} ({n_bits} bits)")
    value = int(digits, 16)
    if value >> n_bits:
        raise ValueError(f"{name} {text!r} does not fit in {n_bits} bits")
    return np.array([(value >> (n_bits - 1 - i)) & 1 for i in range(n_bits)], np.uint8)


def bits_to_hex(bits) -> str:
    bits = np.asarray(bits).astype(int).tolist()
    return format(int("".join(map(str, bits)) or "0", 2), f"0{-(-len(bits) // 4)}x")


def _code(spec: str) -> BitCode:
    try:
        return get_code(spec)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"qrjax ecc: --code {spec}: {err}") from None


def _describe(code: BitCode) -> dict:
    return {"name": code.name, "code": repr(code.code), "n_bits": code.n_bits, "payload_bits": code.payload_bits}


def _parse_all(texts, n_bits, name):
    """Parse every input; keep the errors so each input is reported."""
    parsed, errors = {}, {}
    for i, text in enumerate(texts):
        try:
            parsed[i] = hex_to_bits(text, n_bits, name)
        except ValueError as err:
            errors[i] = str(err)
    return parsed, errors


def cmd_encode(args) -> int:
    code = _code(args.code)
    parsed, errors = _parse_all(args.payloads, code.payload_bits, "payload")
    results = [{"input": t, "error": errors[i]} if i in errors else {"input": t} for i, t in enumerate(args.payloads)]
    if parsed:
        idx = sorted(parsed)
        codewords = np.asarray(code.encode(np.stack([parsed[i] for i in idx])))
        for i, cw in zip(idx, codewords):
            results[i]["codeword"] = bits_to_hex(cw)
    print(json.dumps({"code": _describe(code), "results": results}, indent=2))
    return 1 if errors else 0


def cmd_decode(args) -> int:
    code = _code(args.code)
    parsed, errors = _parse_all(args.codewords, code.n_bits, "codeword")
    erasures = None
    if args.erasures:
        try:
            pos = [int(p) for p in args.erasures.split(",")]
        except ValueError:
            raise SystemExit(f"qrjax ecc: --erasures {args.erasures!r}: expected comma-separated symbol indices")
        if any(not 0 <= p < code.code.n for p in pos):
            raise SystemExit(f"qrjax ecc: --erasures {args.erasures!r}: symbol indices must be in 0..{code.code.n - 1}")
        erasures = np.zeros(code.code.n, bool)
        erasures[pos] = True
    results = [{"input": t, "error": errors[i]} if i in errors else {"input": t} for i, t in enumerate(args.codewords)]
    if parsed:
        idx = sorted(parsed)
        bits = np.stack([parsed[i] for i in idx])
        er = None if erasures is None else np.broadcast_to(erasures, (len(idx), code.code.n))
        res = code.decode(bits, er)
        for j, i in enumerate(idx):
            results[i].update(ok=bool(res.ok[j]), payload=bits_to_hex(res.payload[j]),
                              n_corrected=int(res.n_corrected[j]), codeword=bits_to_hex(res.bits[j]))
    print(json.dumps({"code": _describe(code), "results": results}, indent=2))
    return 1 if errors else 0


def cmd_demo(args) -> int:
    """Encode a payload, corrupt the codeword, decode it, and say what happened."""
    import jax

    code = _code(args.code)
    key_payload, key_err = jax.random.split(jax.random.key(args.seed))
    payload = np.asarray(jax.random.bernoulli(key_payload, 0.5, (code.payload_bits,)), np.uint8)
    codeword = np.asarray(code.encode(payload))
    print(f"code      {code.name}: {code.code!r}, {code.n_bits} codeword bits, {code.payload_bits} payload bits")
    print(f"payload   {bits_to_hex(payload)}")
    print(f"codeword  {bits_to_hex(codeword)}")
    flips = np.asarray(jax.random.choice(key_err, code.n_bits, (args.flips,), replace=False))
    for n_flips in range(args.flips + 1):
        noisy = codeword.copy()
        noisy[flips[:n_flips]] ^= 1
        res = code.decode(noisy)
        recovered = bool(np.array_equal(np.asarray(res.payload), payload))
        verdict = ("recovered" if recovered else "WRONG payload") if bool(res.ok) else \
            ("flagged uncorrectable" + (", payload bits intact" if recovered else ""))
        print(f"{n_flips} bit flip(s) at {sorted(flips[:n_flips].tolist())}: received {bits_to_hex(noisy)} -> "
              f"ok={bool(res.ok)}, {int(res.n_corrected)} symbol(s) corrected, {verdict}")
    return 0


def register(systems) -> None:
    ecc = systems.add_parser("ecc", help="error-correcting codes (Reed-Solomon, BCH)",
                             description="Encode and decode watermark payloads with the qrjax codes.")
    cmds = ecc.add_subparsers(dest="command", required=True, metavar="COMMAND")
    code_help = (f"code: one of {sorted(PRESETS)}, or rs:N,K[,M], bch:N,K[,M] (default {DEFAULT_WATERMARK_CODE})")

    enc = cmds.add_parser("encode", help="payload hex -> codeword hex (JSON)")
    enc.add_argument("payloads", nargs="+", metavar="HEX")
    enc.add_argument("--code", default=DEFAULT_WATERMARK_CODE, help=code_help)
    enc.set_defaults(func=cmd_encode)

    dec = cmds.add_parser("decode", help="codeword hex -> payload hex, ok, corrections (JSON)")
    dec.add_argument("codewords", nargs="+", metavar="HEX")
    dec.add_argument("--code", default=DEFAULT_WATERMARK_CODE, help=code_help)
    dec.add_argument("--erasures", default="", help="comma-separated symbol indices to treat as erased")
    dec.set_defaults(func=cmd_decode)

    demo = cmds.add_parser("demo", help="encode, corrupt and decode one payload")
    demo.add_argument("--code", default=DEFAULT_WATERMARK_CODE, help=code_help)
    demo.add_argument("--flips", type=int, default=4, help="corrupt with 0..FLIPS bit flips")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
