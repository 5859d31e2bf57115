"""Payloads and codewords as hexadecimal text (how users write watermark keys): MSB-first bit arrays <-> hex."""

from __future__ import annotations

import string

import numpy as np


def hex_to_bits(text: str, n_bits: int, name: str) -> np.ndarray:
    """Hex string (optional 0x) holding exactly ceil(n_bits / 4) digits -> uint8[n_bits], MSB first.

    name: what the text is (e.g. "--key"), used in the error that names a bad string."""
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
    """{0,1}[n] (MSB first) -> ceil(n / 4) lowercase hex digits."""
    bits = np.asarray(bits).astype(int).tolist()
    return format(int("".join(map(str, bits)) or "0", 2), f"0{-(-len(bits) // 4)}x")
