"""XLA's compile effort inside the suite: tests/conftest.py switches most optimisations off on CPU, where the suite is
compile-bound; `optimized()` switches them back on for the few cases whose run time dominates instead."""

import contextlib

import jax


@contextlib.contextmanager
def optimized():
    """Compile with XLA's optimisations inside the block. For the shipped watermark model's refined embedding (Adam
    steps through its encoder and extractor), which runs ~14x slower unoptimised (4 images of 256^2: 92 s against
    7 s). The flag is read when a program compiles and is not part of the jit cache key: programs compiled here stay
    cached as compiled. Only the compiler's effort differs, not what a program computes (up to float rounding)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
