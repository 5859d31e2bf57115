"""qrjax.train.export: config <-> JSON, the workdir's config check, model files, shipped models read through
importlib.resources (also from a zip), the CLIs' --model rule, and inference importing no training code."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import flax.serialization
import jax
import numpy as np
import pytest

from qrjax.diffusion import export as dexport
from qrjax.diffusion.config import DiTConfig
from qrjax.diffusion.config import get_config as diffusion_config
from qrjax.train import export
from qrjax.watermark import export as wexport
from qrjax.watermark.config import PRESETS as WATERMARK_PRESETS
from qrjax.watermark.config import WatermarkConfig
from qrjax.watermark.config import get_config as watermark_config

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Toy:
    name: str = "toy"
    steps: int = 3
    rate: float = 0.5
    sizes: tuple[int, ...] = (1, 2, 3)
    pair: tuple[float, float] = (0.25, 4.0)
    grid: tuple[tuple[int, int], ...] = ((1, 2), (3, 4))
    tags: tuple[str, ...] | None = None
    flags: list = dataclasses.field(default_factory=lambda: [1, 2])  # a list field stays a list


def _variables():
    rng = np.random.default_rng(0)
    return {"net": {"kernel": rng.standard_normal((3, 4)).astype(np.float32),
                    "bias": np.arange(4, dtype=np.int32),
                    "table": rng.integers(0, 256, (2, 5), dtype=np.uint8)},
            "scale": np.float32(1.5) * np.ones((), np.float32),
            "factor": 2}


def _assert_bit_identical(a, b):
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb
    for (pa, xa), (pb, xb) in zip(la, lb, strict=True):
        assert pa == pb
        if isinstance(xa, int):
            assert type(xb) is int and xa == xb
            continue
        xb = np.asarray(xb)
        assert xb.dtype == np.asarray(xa).dtype and xb.shape == np.shape(xa), jax.tree_util.keystr(pa)
        assert xb.tobytes() == np.asarray(xa).tobytes(), jax.tree_util.keystr(pa)


# ------------------------------------------------------------------------------------------------ configs


def test_config_round_trips_through_json_with_tuples_restored():
    toy = Toy(sizes=(7,), tags=("a", "b"), grid=((5, 6),))
    d = export.config_to_dict(toy)
    text = json.dumps(d)  # JSON-safe
    assert d["sizes"] == [7] and d["grid"] == [[5, 6]] and d["pair"] == [0.25, 4.0]
    back = export.config_from_dict(Toy, json.loads(text), source="toy.json")
    assert back == toy
    assert type(back.sizes) is tuple and type(back.grid[0]) is tuple and type(back.tags) is tuple
    assert type(back.flags) is list  # only tuple-typed fields become tuples
    assert export.config_from_dict(Toy, export.config_to_dict(Toy())).tags is None
    # every preset of both systems survives the trip
    for config in [*WATERMARK_PRESETS.values(), *(diffusion_config(p) for p in ("tiny", "cpu", "paper"))]:
        assert export.config_from_dict(type(config), json.loads(json.dumps(export.config_to_dict(config)))) == config


def test_unknown_and_missing_config_fields_are_named():
    d = export.config_to_dict(Toy())
    bad = {**d, "colour": 1, "size": 2}
    del bad["rate"]
    with pytest.raises(ValueError) as err:
        export.config_from_dict(Toy, bad, source="runs/x/model.json")
    msg = str(err.value)
    assert "runs/x/model.json" in msg and "Toy" in msg
    assert "unknown fields ['colour', 'size']" in msg and "missing fields ['rate']" in msg
    del d["steps"]
    with pytest.raises(ValueError, match=r"Toy config has missing fields \['steps'\]"):
        export.config_from_dict(Toy, d)


def test_fields_added_later_load_from_older_files_with_their_old_meaning():
    old = export.config_to_dict(watermark_config("cpu"))
    for name in WatermarkConfig.ADDED_FIELDS:
        del old[name]
    back = export.config_from_dict(WatermarkConfig, old)
    assert (back.carrier_band, back.luma, back.highpass_size) == (0, False, 3)  # what files without them meant
    assert back.jitter == (1.0, 0.02, 0.5) and type(back.jitter) is tuple
    del old["steps"]  # any other missing field is still an error
    with pytest.raises(ValueError, match=r"missing fields \['steps'\]"):
        export.config_from_dict(WatermarkConfig, old)


def test_workdir_check_writes_once_then_lists_every_difference(tmp_path):
    config = watermark_config("tiny")
    path = export.check_workdir_config(tmp_path / "run", config)
    assert json.loads(path.read_text()) == export.config_to_dict(config)
    assert export.check_workdir_config(tmp_path / "run", config) == path  # the same config passes
    with pytest.raises(ValueError) as err:
        export.check_workdir_config(tmp_path / "run", config.replace(steps=9, attacks=("identity",), seed=1))
    msg = str(err.value)
    assert "holds a run with a different config" in msg and "WatermarkConfig" in msg
    assert "steps: workdir 4, this run 9" in msg and "seed: workdir 0, this run 1" in msg
    assert 'attacks: workdir ["identity", "flip"' in msg and 'this run ["identity"]' in msg
    assert "bits" not in msg  # equal fields are not listed
    # a field the workdir's file lacks (a config written by an older qrjax) is a difference too
    saved = json.loads(path.read_text())
    del saved["seed"]
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"seed: workdir \(absent\), this run 0"):
        export.check_workdir_config(tmp_path / "run", config)


def test_workdir_run_check_records_then_names_the_differing_settings(tmp_path):
    path = export.check_workdir_run(tmp_path / "run", {"devices": 8, "data": "synthetic", "ref": None})
    assert json.loads(path.read_text()) == {"devices": 8, "data": "synthetic", "ref": None}
    export.check_workdir_run(tmp_path / "run", {"devices": 8, "data": "synthetic", "ref": None})
    with pytest.raises(ValueError, match=r"other settings.*devices: workdir 8, this run 2; ref: workdir None, "
                                         r"this run 'm'"):
        export.check_workdir_run(tmp_path / "run", {"devices": 2, "data": "synthetic", "ref": "m"})


# ------------------------------------------------------------------------------------------------ model files


def test_save_load_round_trip_is_bit_identical(tmp_path):
    config, variables = Toy(sizes=(4, 5)), _variables()
    weights, cfg = export.save_model(tmp_path / "m" / "toy", config, variables, meta={"steps": 7, "names": ["a"]})
    assert (weights.name, cfg.name) == ("toy.msgpack", "toy.json")
    doc = json.loads(cfg.read_text())
    assert doc == {"config_class": "Toy", "config": export.config_to_dict(config), "steps": 7, "names": ["a"]}
    # the .msgpack is plain flax msgpack of the variables
    _assert_bit_identical(variables, flax.serialization.msgpack_restore(weights.read_bytes()))
    for spec in (tmp_path / "m" / "toy", cfg, weights, str(cfg)):
        loaded, got, meta = export.load_model_files(spec, Toy)
        assert loaded == config and meta == {"steps": 7, "names": ["a"]}
        _assert_bit_identical(variables, got)
    with pytest.raises(ValueError, match="reserved"):
        export.save_model(tmp_path / "x", config, variables, meta={"config": {}})


def test_missing_files_and_foreign_json_are_named(tmp_path):
    export.save_model(tmp_path / "toy", Toy(), _variables())
    (tmp_path / "toy.msgpack").rename(tmp_path / "moved.msgpack")
    with pytest.raises(FileNotFoundError, match=r"model '.*toy': missing toy\.msgpack"):
        export.load_model_files(tmp_path / "toy.json", Toy)
    with pytest.raises(FileNotFoundError, match=r"missing nothing\.json and nothing\.msgpack"):
        export.load_model_files(tmp_path / "nothing", Toy)
    (tmp_path / "moved.msgpack").rename(tmp_path / "toy.msgpack")
    with pytest.raises(ValueError, match="holds a Toy config, expected WatermarkConfig"):
        export.load_model_files(tmp_path / "toy", WatermarkConfig)
    (tmp_path / "toy.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="the .json holds a list, expected an object"):
        export.load_model_files(tmp_path / "toy", Toy)


def test_files_written_before_this_format_still_load(tmp_path):
    """The watermark's .json used to be the bare config, the diffusion's {'config': ..., meta...}."""
    export.save_model(tmp_path / "toy", Toy(), _variables())
    (tmp_path / "toy.json").write_text(json.dumps(export.config_to_dict(Toy())))
    config, variables, meta = export.load_model_files(tmp_path / "toy", Toy)
    assert config == Toy() and meta == {} and jax.tree.structure(variables) == jax.tree.structure(_variables())
    (tmp_path / "toy.json").write_text(json.dumps({"config": export.config_to_dict(Toy()), "class_names": ["a"]}))
    config, _, meta = export.load_model_files(tmp_path / "toy", Toy)
    assert config == Toy() and meta == {"class_names": ["a"]}
    (tmp_path / "toy.json").write_text(json.dumps({**export.config_to_dict(Toy()), "extra": 1}))
    with pytest.raises(ValueError, match="unknown field"):  # old files get the same field checks
        export.load_model_files(tmp_path / "toy", Toy)


def test_template_restores_and_checks_shapes_and_dtypes(tmp_path):
    variables = _variables()
    export.save_model(tmp_path / "toy", Toy(), variables)
    sds = jax.ShapeDtypeStruct

    def template(kernel=(3, 4), dtype=np.float32, **extra):
        return {"net": {"kernel": sds(kernel, dtype), "bias": sds((4,), np.int32), "table": sds((2, 5), np.uint8),
                        **extra}, "scale": sds((), np.float32), "factor": 0}

    _, got, _ = export.load_model_files(tmp_path / "toy", Toy, template=template())
    _assert_bit_identical(variables, got)
    seen = []
    _, got, _ = export.load_model_files(tmp_path / "toy", Toy, template=lambda c: seen.append(c) or template())
    assert seen == [Toy()]  # a callable template is built from the loaded config
    cases = [(template(kernel=(4, 3)), r"\['net'\]\['kernel'\] has shape \(3, 4\), expected \(4, 3\)"),
             (template(dtype=np.float16), r"\['net'\]\['kernel'\] has dtype float32, expected float16"),
             (template(gamma=sds((4,), np.float32)), "gamma"),
             ({"net": template()["net"], "factor": 0}, r"unexpected \['scale'\]")]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            export.load_model_files(tmp_path / "toy", Toy, template=bad)
        assert "does not match its config's variables" in str(err.value)


def test_system_templates_catch_a_model_that_does_not_fit_its_config(tmp_path):
    config = diffusion_config("tiny")
    model = dexport.load_pretrained("cpu")
    dexport.save_model(model._replace(config=config), tmp_path / "wrong")  # cpu weights under the tiny config
    with pytest.raises(ValueError, match=r"\['params'\].*has shape"):
        dexport.load_model(tmp_path / "wrong")
    wm = wexport.load_pretrained("cpu")
    assert not wm.config.whiten and "whitening" not in wm.variables
    whitening = {"w": np.eye(wm.config.bits, dtype=np.float32), "b": np.zeros(wm.config.bits, np.float32)}
    wexport.save_model(wm._replace(variables={**wm.variables, "whitening": whitening}), tmp_path / "wm")
    with pytest.raises(ValueError, match=r"unexpected \['whitening'\]\['b'\]"):
        wexport.load_model(tmp_path / "wm")


# ------------------------------------------------------------------------------------------------ shipped models


@pytest.mark.parametrize("name", wexport.PRETRAINED)
def test_shipped_watermark_models_load_through_importlib_resources(name):
    model = wexport.load_pretrained(name)
    folder = ROOT / "qrjax" / "watermark" / "weights"
    doc = json.loads((folder / f"{name}.json").read_text())
    assert doc["config_class"] == "WatermarkConfig" and set(doc) == {"config_class", "config"}
    assert dataclasses.asdict(model.config) == {k: tuple(v) if isinstance(v, list) else v
                                                for k, v in doc["config"].items()}
    assert model.config.name == name and model.config.full_image == (name == "cpu-full")
    _assert_bit_identical(flax.serialization.msgpack_restore((folder / f"{name}.msgpack").read_bytes()),
                          model.variables)


def test_shipped_diffusion_model_loads_through_importlib_resources_with_its_metadata():
    model = dexport.load_pretrained("cpu")
    assert model.config == diffusion_config("cpu")
    folder = ROOT / "qrjax" / "diffusion" / "weights"
    raw = flax.serialization.msgpack_restore((folder / "cpu.msgpack").read_bytes())
    _assert_bit_identical(raw["params"], model.params)
    _assert_bit_identical(raw["autoencoder"], model.autoencoder.to_dict())
    _, _, meta = export.load_model_files(folder / "cpu", DiTConfig)
    assert meta["class_names"] == list(model.class_names) and len(model.class_names) == 12
    assert meta["steps"] == 6000 and set(meta["final_eval"]) >= {"val_loss", "val_loss_t0.5"}
    with pytest.raises(ValueError, match="no shipped qrjax.diffusion model 'huge'; shipped: cpu"):
        dexport.load_pretrained("huge")


def test_load_pretrained_reads_a_package_inside_a_zip(tmp_path):
    """What an installed zip/wheel gives: no weights file next to a __file__ on disk."""
    src = tmp_path / "src"
    export.save_model(src / "m", Toy(steps=5), _variables(), meta={"note": "zipped"})
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped_models/__init__.py", "")
        for suffix in (".json", ".msgpack"):
            z.write(src / f"m{suffix}", f"zipped_models/weights/m{suffix}")
    sys.path.insert(0, str(archive))
    try:
        config, variables, meta = export.load_pretrained("zipped_models", "m", ("m",), Toy)
        assert config == Toy(steps=5) and meta == {"note": "zipped"}
        _assert_bit_identical(_variables(), variables)
        with pytest.raises(ValueError, match="no shipped zipped_models model 'n'; shipped: m"):
            export.load_pretrained("zipped_models", "n", ("m",), Toy)
        with pytest.raises(FileNotFoundError, match="shipped zipped_models model 'gone'"):
            export.load_pretrained("zipped_models", "gone", ("m", "gone"), Toy)
    finally:
        sys.path.remove(str(archive))
        sys.modules.pop("zipped_models", None)


# ------------------------------------------------------------------------------------------------ --model rule


def test_model_spec_rule(tmp_path, monkeypatch):
    calls = []

    def pretrained(name):
        calls.append(("shipped", name))

    def load(path):
        calls.append(("file", Path(path)))

    export.save_model(tmp_path / "run" / "model", Toy(), _variables())
    monkeypatch.chdir(tmp_path)
    for spec in ("a", "run/model", "run/model.json", str(tmp_path / "run" / "model.msgpack")):
        export.resolve_model(spec, ("a", "b"), pretrained, load)
    assert calls == [("shipped", "a"), ("file", Path("run/model")), ("file", Path("run/model.json")),
                     ("file", tmp_path / "run" / "model.msgpack")]
    with pytest.raises(FileNotFoundError) as err:
        export.resolve_model("cpu-huge", ("a", "b"), pretrained, load)
    assert "'cpu-huge' is neither a shipped model (a, b)" in str(err.value) and "cpu-huge.json" in str(err.value)
    assert len(calls) == 4
    # a model file named like a shipped model is reached by its path
    export.save_model(tmp_path / "a", Toy(), _variables())
    export.resolve_model("./a.json", ("a", "b"), pretrained, load)
    assert calls[-1] == ("file", Path("a.json"))


def test_system_spec_rules_load_shipped_and_saved_models(tmp_path):
    shipped = wexport.resolve_model("cpu-full")
    assert shipped.config.full_image
    wexport.save_model(shipped, tmp_path / "copy")
    for spec in (tmp_path / "copy", str(tmp_path / "copy.json"), str(tmp_path / "copy.msgpack")):
        loaded = wexport.resolve_model(spec)
        assert loaded.config == shipped.config
        _assert_bit_identical(jax.device_get(shipped.variables), loaded.variables)
    with pytest.raises(FileNotFoundError, match=r"neither a shipped model \(cpu, cpu-full\)"):
        wexport.resolve_model("cpu-tiny")
    with pytest.raises(FileNotFoundError, match=r"neither a shipped model \(cpu, t2i-cpu\)"):
        dexport.resolve_model("tiny")


# ------------------------------------------------------------------------------------------------ imports


def _imported(code: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_inference_modules_do_not_import_training_code():
    training = ("{'qrjax.watermark.train', 'qrjax.diffusion.train', 'qrjax.clip.train', 'qrjax.train.loop', "
                "'orbax.checkpoint'}")
    got = _imported("import qrjax.watermark, qrjax.diffusion, qrjax.watermark.pipeline, qrjax.diffusion.supergen, "
                    "qrjax.clip, qrjax.clip.evaluate; "
                    f"import sys, json; print(json.dumps(sorted(m for m in sys.modules if m in {training})))")
    assert got == []
    # the export module alone pulls in no optimiser either; the trainer's names still resolve on first use
    got = _imported("import qrjax.train.export, sys, json; "
                    "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('optax', 'orbax') "
                    "or m.startswith('qrjax.train.') and m != 'qrjax.train.export')))")
    assert got == []
    got = _imported("import qrjax.train as t, qrjax.diffusion as d, json; "
                    "print(json.dumps([t.TrainState.__module__, t.fit.__module__, d.train_and_evaluate.__module__]))")
    assert got == ["qrjax.train.state", "qrjax.train.loop", "qrjax.diffusion.train"]
