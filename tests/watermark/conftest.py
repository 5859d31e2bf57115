"""Small models shared by the watermark tests: random-init `tiny` presets (a band-limited periodic carrier, so the
synchronised reader runs), in memory and as model files for the CLI and the demo."""

import jax
import pytest


def tiny_model(overrides=()):
    from qrjax.watermark import WatermarkModel, get_config
    from qrjax.watermark.model import init_variables

    config = get_config("tiny", list(overrides))
    # one compiled init: run op by op, flax's init compiles every small op apart (~15 s on two busy cores)
    return WatermarkModel(config, jax.jit(init_variables, static_argnums=0)(config, jax.random.key(0)))


@pytest.fixture(scope="session")
def tiny():
    """The tiny tile model (random weights): what it detects is chance, but every pipeline must agree on it."""
    return tiny_model()


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory, tiny):
    """Model files (.json): "tile" the tiny tile model; "full" a tiny full-image model (for --baseline-model);
    "unsyncable" a tiny tile model whose carrier is not band-limited (the synchronised reader refuses it)."""
    from qrjax.watermark.export import save_model

    d = tmp_path_factory.mktemp("tiny_models")
    save_model(tiny, d / "tiny")
    save_model(tiny_model(["full_image=true"]), d / "tiny-full")
    save_model(tiny_model(["carrier_band=0", "luma=false"]), d / "tiny-unsyncable")
    return {"tile": str(d / "tiny.json"), "full": str(d / "tiny-full.json"),
            "unsyncable": str(d / "tiny-unsyncable.json")}
