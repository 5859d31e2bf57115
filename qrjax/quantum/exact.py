"""Closed-form final states of the benchmark circuits, evaluated on any set of amplitude indices: the reference for
fidelity checks past the size a dense simulation fits in (`CompressedState.fidelity_to`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qrjax.quantum.circuits import bv_default_secret, qft_default_input

Amplitudes = Callable[[np.ndarray], np.ndarray]  # uint64[k] logical indices -> complex128[k], a normalised state


def ghz_amplitudes(n: int) -> Amplitudes:
    """(|0...0> + |1...1>) / sqrt(2)."""
    top = np.uint64((1 << n) - 1)
    return lambda y: np.where((y == 0) | (y == top), 2**-0.5, 0.0).astype(np.complex128)


def qft_amplitudes(n: int, x: int | None = None) -> Amplitudes:
    """QFT|x>: exp(2 pi i x y / 2^n) / sqrt(2^n); x y mod 2^n in exact integer arithmetic (n <= 64)."""
    x = np.uint64(qft_default_input(n) if x is None else x)
    mask = np.uint64((1 << n) - 1) if n < 64 else np.uint64(2**64 - 1)

    def amps(y):
        with np.errstate(over="ignore"):
            phase = (x * y.astype(np.uint64)) & mask  # wraps mod 2^64, and 2^n divides 2^64
        return np.exp(2j * np.pi * (phase.astype(np.float64) / 2.0**n)) * 2.0 ** (-n / 2)

    return amps


def bv_amplitudes(n: int, secret: int | None = None) -> Amplitudes:
    """Bernstein-Vazirani on n data qubits + ancilla qubit n: |secret> (x) |->."""
    s = np.uint64(bv_default_secret(n) if secret is None else secret)
    anc = np.uint64(1 << n)
    return lambda y: (np.where(y == s, 1.0, 0.0) - np.where(y == s | anc, 1.0, 0.0)).astype(np.complex128) * 2**-0.5


def exact_amplitudes(name: str, n: int) -> Amplitudes | None:
    """The closed form of `build(name, n)`'s final state, or None where there is none (qaoa, ising, random)."""
    return {"ghz": ghz_amplitudes, "qft": qft_amplitudes, "bv": bv_amplitudes}.get(name, lambda n: None)(n)
