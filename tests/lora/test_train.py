"""The ALTO engine end to end on a tiny backbone: every configuration is accounted for, a configuration's result does
not depend on what it was batched with (one slot at a time == 4 slots == 4 devices with CP-SAT placement), early exit
exits, a resumed run equals an uninterrupted one, the CLI's summary and the exported PEFT adapters."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from qrjax.lora.backbone import save_backbone
from qrjax.lora.config import LlamaConfig, get_tune_config
from qrjax.lora.model import init_backbone
from qrjax.lora.tasks import Grid, make_task
from qrjax.lora.train import tune

MODEL = LlamaConfig(hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, num_kv_heads=2)
CONFIG = dataclasses.replace(get_tune_config("tiny"), steps=12, eval_every=4, capacity=8, slots=4, early_exit=False,
                             checkpoint_every=5)
# moderate learning rates: at lr 0.3 Adam turns float32 rounding differences in near-zero gradient entries into
# +-lr steps (m / sqrt(v) ~ sign), so two summation orders drift apart within a few steps
GRID = Grid.product((3e-3, 3e-2), (2, 4), (2, 4))


@pytest.fixture(scope="module")
def setup():
    base = init_backbone(MODEL, jax.random.key(0))
    tasks = {n: make_task(n, num_train=64, num_val=8, seed=1) for n in ("reverse", "recall")}
    return (MODEL, base), tasks, GRID.configs(list(tasks))


@pytest.fixture(scope="module")
def batched_run(setup, tmp_path_factory):
    backbone, tasks, points = setup
    return tune(backbone, tasks, points, CONFIG, tmp_path_factory.mktemp("b"), progress=False)


def _by_index(summary):
    return {c["index"]: c for c in summary["configs"]}


def test_every_configuration_trains_its_steps(setup, batched_run):
    _, _, points = setup
    recs = batched_run["configs"]
    assert [r["index"] for r in recs] == [p.index for p in points]
    assert all(r["status"] == "finished" and r["steps"] == CONFIG.steps for r in recs)
    assert batched_run["samples"] == sum(p.batch * CONFIG.steps for p in points)
    for t in ("reverse", "recall"):
        want = min(r["best_val_loss"] for r in recs if r["task"] == t)
        assert batched_run["best"][t]["best_val_loss"] == want


@pytest.mark.multidevice
def test_result_does_not_depend_on_batching(setup, batched_run, tmp_path):
    """Each configuration's data and arithmetic are its own: one slot at a time, 4 slots on one device and 4 devices
    x 2 slots under CP-SAT placement give the same best validation losses."""
    backbone, tasks, points = setup
    some = [p for p in points if p.index % 3 == 0]
    single = tune(backbone, tasks, some, dataclasses.replace(CONFIG, slots=1), tmp_path / "a", progress=False,
                  export=False)
    placed = tune(backbone, tasks, points, dataclasses.replace(CONFIG, slots=2, devices=4), tmp_path / "d",
                  placement="cp-sat", progress=False, export=False)
    ref = _by_index(batched_run)
    for summary in (single, placed):
        for idx, rec in _by_index(summary).items():
            np.testing.assert_allclose(rec["best_val_loss"], ref[idx]["best_val_loss"], rtol=1e-5)
            assert rec["steps"] == ref[idx]["steps"]
    assert single["engine_steps"] == len(some) * CONFIG.steps  # one configuration per step
    assert batched_run["engine_steps"] < len(points) * CONFIG.steps


def test_resume_equals_uninterrupted(setup, batched_run, tmp_path):
    backbone, tasks, points = setup
    partial = tune(backbone, tasks, points, CONFIG, tmp_path, progress=False, max_engine_steps=7)
    assert any(r["status"] in ("queued", "running") for r in partial["configs"])
    resumed = tune(backbone, tasks, points, CONFIG, tmp_path, progress=False)
    for a, b in zip(resumed["configs"], batched_run["configs"]):
        assert a["status"] == b["status"] and a["steps"] == b["steps"]
        np.testing.assert_allclose(a["best_val_loss"], b["best_val_loss"], rtol=1e-6)
    lines = (tmp_path / "configs.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["index"] for x in lines) == [p.index for p in points]


def test_early_exit_exits_and_accounts(setup, tmp_path):
    backbone, tasks, points = setup
    config = dataclasses.replace(CONFIG, early_exit=True, steps=40, eval_every=2)
    points = Grid.product((1e-3, 3e-1), (2, 4), (2, 4)).configs(list(tasks))
    summary = tune(backbone, tasks, points, config, tmp_path, progress=False, export=False)
    recs = summary["configs"]
    exited = [r for r in recs if r["status"] == "exited"]
    assert exited and all(r["exit_reason"] in ("diverged", "overfit", "underperforming") for r in exited)
    assert all(r["steps"] < config.steps for r in exited)
    # underperforming: at the 2-step warm-up boundary (5 % of 40), each task keeps at least ceil(0.25 * 8) = 2
    for t in tasks:
        kept = [r for r in recs if r["task"] == t and r["exit_reason"] != "underperforming"]
        assert len(kept) >= 2
    assert summary["samples"] < sum(p.batch * config.steps for p in points)
    assert sum(summary["exits"].values()) == len(exited)


def test_exported_adapter_is_peft_layout(setup, batched_run, tmp_path):
    from safetensors.numpy import load_file

    backbone, tasks, points = setup
    p = points[3]  # rank 4
    tune(backbone, tasks, [p], dataclasses.replace(CONFIG, slots=1), tmp_path, progress=False)
    folder = tmp_path / "adapters" / f"{p.task}-{p.index}"
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["r"] == p.rank and cfg["lora_alpha"] == CONFIG.alpha_ratio * p.rank
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    a = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"]
    assert a.shape == (p.rank, MODEL.hidden_size) and b.shape == (MODEL.hidden_size, p.rank)
    assert len(tensors) == 2 * 7 * MODEL.num_layers


def test_cli_tune_json(setup, tmp_path, capsys):
    from qrjax.cli import main

    backbone, _, _ = setup
    save_backbone(tmp_path / "bb", *backbone)
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join([json.dumps({"prompt": f"x{i}=", "completion": str(i % 7)}) for i in range(40)]
                              + ["{not json", json.dumps({"prompt": "a"}), json.dumps({"prompt": "b", "completion": 3})])
                    + "\n")
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"lr": [1e-2], "rank": [2, 4], "batch": [2]}))
    main(["lora", "tune", "--backbone", str(tmp_path / "bb"), "--tasks", f"reverse,{data}", "--grid", str(grid),
          "--preset", "tiny", "--steps", "4", "--no-early-exit", "--workdir", str(tmp_path / "w"), "--json",
          "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert len(out["configs"]) == 4 and {c["task"] for c in out["configs"]} == {"reverse", "mine"}
    for c in out["configs"]:
        assert set(c) >= {"task", "lr", "rank", "batch", "status", "exit_reason", "steps", "best_val_loss"}
        assert c["status"] == "finished" and c["steps"] == 4 and c["exit_reason"] is None
    assert len(out["bad_lines"]) == 3 and all("mine.jsonl:" in line for line in out["bad_lines"])
    assert out["seconds"] > 0
    # the same workdir with other settings is refused, naming them
    with pytest.raises(SystemExit, match="steps"):
        main(["lora", "tune", "--backbone", str(tmp_path / "bb"), "--tasks", f"reverse,{data}", "--grid", str(grid),
              "--preset", "tiny", "--steps", "6", "--workdir", str(tmp_path / "w"), "--quiet"])


def test_capacity_from_the_memory_model(setup, tmp_path):
    """ALTO's M(B) = k0 + k1·B·L fitted on the run's own compiled step: the capacity is the largest B whose
    prediction, with the margin, fits the budget; a budget below the largest batch is refused."""
    backbone, tasks, points = setup
    some = points[:4]
    seq_len = max(t.seq_len for t in tasks.values())
    probe = tune(backbone, tasks, some, dataclasses.replace(CONFIG, memory_budget_mb=1e6, steps=2), tmp_path / "p",
                 progress=False, export=False)
    m = probe["memory_model"]
    assert m["r2"] > 0.99 and m["k1"] > 0
    assert probe["capacity"] == 4 + 4 + 2 + 2  # a huge budget: the 4 slots at the largest batches, no more
    assert [length for _, length, _ in m["points"]] == [seq_len] * len(m["points"])
    # a budget that fits exactly 6 sequences per device with the 10 % margin
    budget = (m["k0"] + m["k1"] * 6.5 * seq_len) * (1 + CONFIG.memory_margin) / 2**20
    run = tune(backbone, tasks, some, dataclasses.replace(CONFIG, memory_budget_mb=budget, steps=2), tmp_path / "r",
               progress=False, export=False)
    assert run["capacity"] == 6 and all(c["status"] == "finished" for c in run["configs"])
    tight = (m["k0"] + m["k1"] * 3.5 * seq_len) * (1 + CONFIG.memory_margin) / 2**20
    with pytest.raises(ValueError, match="fewer than the largest batch 4"):
        tune(backbone, tasks, some, dataclasses.replace(CONFIG, memory_budget_mb=tight, steps=2), tmp_path / "t",
             progress=False, export=False)


def test_cli_tune_with_a_hugging_face_tokenizer(tmp_path, capsys):
    """A user's checkpoint folder with tokenizer.json: tasks are encoded with its tokens and special ids; a tokenizer
    whose ids exceed the embedding table is refused."""
    from qrjax.cli import main
    from tests.lora.hf_tokenizer import train_tokenizer, write_tokenizer_files

    tok = train_tokenizer()
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"configs": [{"lr": 1e-2, "rank": 2, "batch": 2}]}))
    for vocab, folder in ((303, "ok"), (280, "small")):
        config = dataclasses.replace(MODEL, vocab_size=vocab)
        save_backbone(tmp_path / folder, config, init_backbone(config, jax.random.key(1)))
        hf = json.loads((tmp_path / folder / "config.json").read_text())
        write_tokenizer_files(tmp_path / folder, tok, config={**hf, "bos_token_id": 300, "eos_token_id": 301,
                                                              "pad_token_id": 302})
    args = ["lora", "tune", "--tasks", "sort", "--grid", str(grid), "--preset", "tiny", "--steps", "2", "--json",
            "--quiet"]
    main(args + ["--backbone", str(tmp_path / "ok"), "--workdir", str(tmp_path / "w")])
    out = json.loads(capsys.readouterr().out)
    assert [c["status"] for c in out["configs"]] == ["finished"] and np.isfinite(out["configs"][0]["best_val_loss"])
    with pytest.raises(SystemExit, match="280"):
        main(args + ["--backbone", str(tmp_path / "small"), "--workdir", str(tmp_path / "w2")])
