"""Test set-up shared by the whole suite.

XLA_FLAGS must be set before JAX starts: every test sees 8 simulated CPU devices, so multi-device code runs here and
is compared with the single-device result. On CPU most XLA optimisations are switched off: the suite is dominated by
compile time, not run time (`tests.xla_mode.optimized` turns them back on where run time dominates).
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

ON_CPU = jax.default_backend() == "cpu"
if ON_CPU:
    jax.config.update("jax_disable_most_optimizations", True)


def pytest_collection_modifyitems(config, items):
    if not ON_CPU:
        return
    skip_gpu = pytest.mark.skip(reason="needs a GPU (runs with the gpu marker on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
