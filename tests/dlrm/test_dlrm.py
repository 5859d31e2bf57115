"""DLRM: the model against brute force, the hybrid-parallel forward against a plain single-device reference (with
the artifact's simulated compression as the reference of the real compressed collective), 1 vs 8 devices, the
straight-through and compressed backward, the collectives' bytes against the compiled program, the bounds, and
training end to end (CLI on a Criteo TSV file with malformed lines; resume after a kill)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from qrjax.compression import bound_violations, fixed
from qrjax.dlrm import bounds, model, sharded
from qrjax.dlrm.config import PAPER_TABLES, get_config
from qrjax.dlrm.data import SyntheticCriteo
from qrjax.parallel import make_mesh

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.multidevice


@pytest.fixture(scope="module")
def tiny():
    config = get_config("tiny")
    data = SyntheticCriteo(config.table_sizes, multi_hot=config.multi_hot, seed=0)
    return config, data.batch(0, config.batch_size)


def _setup(config, n):
    mesh = make_mesh((n,), ("data",), devices=jax.devices()[:n])
    placement = sharded.Placement.build(config.table_sizes, n)
    params = sharded.init_params(config, placement, jax.random.key(0))
    return mesh, placement, jax.device_put(params, sharded.param_shardings(params, mesh))


def _reference_loss(config, placement, params, batch, eps=None, devices=1):
    tables = [params["tables"][placement.device[t], placement.offset[t]:placement.offset[t] + r]
              for t, r in enumerate(config.table_sizes)]
    logits = model.reference_logits(config, params["dense"], tables, batch["dense"], batch["sparse"], eps=eps,
                                    devices=devices)
    return jnp.mean(model.bce_with_logits(logits, batch["label"]))


def test_interaction_is_the_pairwise_dot_products(rng):
    x, emb = rng.normal(size=(3, 4)), rng.normal(size=(3, 5, 4))
    out = np.asarray(model.interact(jnp.asarray(x), jnp.asarray(emb)))
    v = np.concatenate([x[:, None], emb], 1)
    want = [np.r_[x[b], [v[b, i] @ v[b, j] for i in range(6) for j in range(i + 1, 6)]] for b in range(3)]
    np.testing.assert_allclose(out, np.asarray(want), rtol=1e-5, atol=1e-5)


def test_placement_balances_rows_and_round_trips(rng):
    sizes = get_config("cpu").table_sizes
    for n in (1, 3, 8):
        p = sharded.Placement.build(sizes, n)
        assert sorted(zip(p.device, p.slot)) == sorted(set(zip(p.device, p.slot)))  # one table per slot
        assert max(np.bincount(p.device, minlength=n)) == p.slots == -(-len(sizes) // n)
        load = np.bincount(p.device, weights=sizes, minlength=n)
        assert load.max() == p.rows and load.max() <= 1.5 * load.mean()
        assert sorted(p.slot_table[p.slot_table >= 0]) == list(range(len(sizes)))
        tables = [rng.normal(size=(s, 2)).astype(np.float32) for s in sizes]
        for a, b in zip(p.unstack(p.stack(tables)), tables):
            np.testing.assert_array_equal(a, b)


def test_table_bounds_and_multiplier():
    config = get_config("cpu", {"compress": "adaptive"})
    eps = bounds.table_eps(config)
    assert sorted(np.flatnonzero(eps == config.eps_tight)) == sorted(PAPER_TABLES["kaggle"]["tight"])
    assert sorted(np.flatnonzero(eps == config.eps_loose)) == sorted(PAPER_TABLES["kaggle"]["loose"])
    others = np.setdiff1d(np.arange(26), PAPER_TABLES["kaggle"]["tight"] + PAPER_TABLES["kaggle"]["loose"])
    assert np.all(eps[others] == np.float32(config.eps_other))
    assert np.all(bounds.table_eps(config.replace(compress="fixed", eps=0.02)) == np.float32(0.02))
    # stats rule: more distinct rows per batch -> tighter, at the two ends exactly eps_tight / eps_loose
    stats = np.array([0.9, 0.01, 0.1] + [0.05] * 23)
    e = bounds.table_eps(config.replace(table_rule="stats"), stats)
    assert e[0] == pytest.approx(config.eps_tight) and e[1] == pytest.approx(config.eps_loose)
    assert e[0] < e[2] < e[3] < e[1]
    with pytest.raises(ValueError, match="statistics"):
        bounds.table_eps(config.replace(table_rule="stats"))
    # iteration level: 2 -> 1 over early_stage (540 steps)
    m = {s: [float(bounds.multiplier(t, config.replace(schedule=s))) for t in (0, 53, 54, 270, 540, 5000)]
         for s in ("step", "linear", "log", "constant")}
    assert m["step"] == pytest.approx([2.0, 2.0, 1.9, 1.5, 1.0, 1.0])
    assert m["linear"] == pytest.approx([2.0, 2 - 53 / 540, 1.9, 1.5, 1.0, 1.0])
    assert m["log"] == pytest.approx([2.0] + [2 - np.log1p(t) / np.log1p(540) for t in (53, 54, 270)] + [1, 1])
    assert m["constant"] == [1.0] * 6
    assert bounds.code_dtype(config, eps) == "int8"
    assert bounds.code_dtype(config.replace(eps_tight=0.001), bounds.table_eps(config.replace(eps_tight=0.001))) \
        == "int16"


def test_sharded_forward_matches_the_reference(tiny):
    config, batch = tiny
    mesh, placement, params = _setup(config, 8)
    host = jax.device_get(params)
    eps = bounds.table_eps(config.replace(compress="adaptive"))
    for compress in (False, True):
        forward = jax.jit(sharded.make_forward(config, placement, mesh, compress=compress))
        logits, stats = forward(params, batch, eps)
        # the real compressed collective delivers exactly what the artifact's in-place simulation computes
        want = model.reference_logits(config, host["dense"], placement.unstack(host["tables"]), batch["dense"],
                                      batch["sparse"], eps=eps if compress else None, devices=8)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-5, atol=1e-5)
        if compress:
            assert int(stats["violations"]) == 0 and 0 < int(stats["max_code"]) <= fixed.max_code(0.01)
            assert int(stats["histogram"].sum()) == 8 * 8 * placement.slots * 8 * config.embedding_dim
    plain = model.reference_logits(config, host["dense"], placement.unstack(host["tables"]), batch["dense"],
                                   batch["sparse"])
    assert not np.allclose(np.asarray(plain), np.asarray(want), atol=1e-6)  # the compression is not a no-op


def test_one_and_eight_devices_train_alike(tiny):
    # The same tables (one key per table) and batches: the losses differ only by float summation order (the loss
    # and the replicated MLPs' gradients are sums of 8 partial sums instead of one), ~1e-7 relative a step.
    config, _ = tiny
    data = SyntheticCriteo(config.table_sizes, multi_hot=config.multi_hot, seed=1)
    from qrjax.dlrm.train import make_state

    runs = {}
    for n in (1, 8):
        mesh, placement, _ = _setup(config, n)
        state, shardings = make_state(config, placement, mesh)
        state = jax.device_put(state, shardings)
        step = sharded.make_train_step(config, placement, mesh, bounds.table_eps(config), "int8")
        losses = []
        for i in range(3):
            state, m = step(state, data.batch(i, config.batch_size))
            losses.append(float(m["loss"]))
        runs[n] = losses, placement.unstack(jax.device_get(state.params["tables"]))
    np.testing.assert_allclose(runs[1][0], runs[8][0], rtol=1e-5)
    for a, b in zip(runs[1][1], runs[8][1]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_straight_through_backward_is_the_artifacts(tiny):
    # The artifact overwrites .data: the forward sees Q(x), the backward the identity. Reference: x + sg(Q(x) - x).
    config, batch = tiny
    config = config.replace(compress="adaptive")
    mesh, placement, params = _setup(config, 8)
    eps = bounds.table_eps(config)
    loss = sharded.make_loss(sharded.make_forward(config, placement, mesh, compress=True))
    got = jax.jit(jax.grad(lambda p: loss(p, batch, eps)[0]))(params)

    def reference(p):
        tables = [p["tables"][placement.device[t], placement.offset[t]:placement.offset[t] + r]
                  for t, r in enumerate(config.table_sizes)]
        emb = jnp.stack([t[batch["sparse"][:, i, :]].sum(1) for i, t in enumerate(tables)], 1)
        blocks = emb.reshape(8, 8, -1, config.embedding_dim).transpose(0, 2, 1, 3)
        rebuilt = fixed.dequantize(fixed.quantize(blocks, eps[None, :], axes=(2, 3)))
        blocks = blocks + jax.lax.stop_gradient(rebuilt - blocks)
        emb = blocks.transpose(0, 2, 1, 3).reshape(emb.shape)
        logits = model.dense_arch(config).apply({"params": p["dense"]}, batch["dense"], emb)
        return jnp.mean(model.bce_with_logits(logits, batch["label"]))

    want = jax.grad(reference)(jax.device_get(params))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_compressed_backward_keeps_the_bound_on_the_gradients(rng):
    mesh = make_mesh((8,), ("data",))
    x = jnp.asarray(rng.normal(size=(8 * 8, 3, 4, 5)).astype(np.float32))  # per device [n=8, S=3, B_l=4, D=5]
    g = jnp.asarray((rng.normal(size=x.shape) * 1e-3).astype(np.float32))
    eps = jnp.asarray(np.array([0.01, 0.03, 0.05], np.float32))
    results = {}
    for compress_backward in (False, True):
        exchange = sharded.make_exchange(True, compress_backward, "int8")

        def run(x, g, eps=eps):
            e = jnp.broadcast_to(eps[None], (8, 3))
            y, vjp = jax.vjp(lambda v: exchange(v, e, e)[0], x)
            return y, vjp(g)[0]

        f = jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=(P("data"), P("data"))))
        results[compress_backward] = [np.asarray(a) for a in f(x, g)]
    exact = np.asarray(jax.jit(jax.shard_map(lambda v: jax.lax.all_to_all(v, "data", 0, 0), mesh=mesh,
                                             in_specs=P("data"), out_specs=P("data")))(g))
    np.testing.assert_array_equal(results[False][1], exact)  # straight-through: the float32 gradients
    back = results[True][1]
    assert not np.array_equal(back, exact)
    for d in range(8):  # per received block (source, slot): the bound of that slot's table
        for s, e in enumerate((0.01, 0.03, 0.05)):
            for src in range(8):
                assert bound_violations(exact[d * 8 + src, s], back[d * 8 + src, s], e, "rel") == 0


@pytest.mark.parametrize("compress,backward", [("none", False), ("adaptive", False), ("adaptive", True)])
def test_wire_bytes_are_the_programs_all_to_all_bytes(tiny, compress, backward):
    config, batch = tiny
    config = config.replace(compress=compress, compress_backward=backward)
    mesh, placement, params = _setup(config, 8)
    from qrjax.dlrm.train import make_state

    state, shardings = make_state(config, placement, mesh)
    eps = bounds.table_eps(config)
    step = sharded.make_train_step(config, placement, mesh, eps, "int8")
    text = step.lower(jax.device_put(state, shardings), batch).as_text()
    per_device = 0
    for m in re.finditer(r'"?stablehlo.all_to_all"?.*?:\s*\(tensor<([0-9x]+)x(f32|i8|i16)>\)', text):
        dims, dtype = m.group(1), m.group(2)
        per_device += int(np.prod([int(v) for v in dims.split("x")])) * {"f32": 4, "i8": 1, "i16": 2}[dtype]
    expected = sharded.wire_bytes(config, placement, "int8" if compress != "none" else None)
    # each device keeps 1/8 of every all-to-all buffer; the other 7/8 cross to other devices
    assert per_device * 8 * 7 // 8 == expected.total > 0
    if compress != "none":
        assert expected.forward < 0.3 * expected.forward_float32


def _tsv(path: Path, rng, lines: int, bad: dict[int, str]) -> None:
    out = []
    for i in range(1, lines + 1):
        if i in bad:
            out.append(bad[i])
            continue
        ints = [str(v) if rng.random() > 0.1 else "" for v in rng.integers(0, 50, 13)]
        cats = [f"{v:08x}" if rng.random() > 0.05 else "" for v in rng.integers(0, 2**32, 26)]
        out.append("\t".join([str(int(rng.random() < 0.3))] + ints + cats))
    path.write_text("\n".join(out) + "\n")


def test_train_cli_on_a_criteo_file(tmp_path, rng):
    data = tmp_path / "day.tsv"
    _tsv(data, rng, 600, {5: "1\t2\t3", 77: "x" + "\t" * 39, 300: "0" + "\t1" * 13 + "\tzz" * 26})
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    cmd = [sys.executable, "-m", "qrjax", "dlrm", "train", "--preset", "tiny", "--data", str(data), "--compress",
           "adaptive", "--devices", "8", "--out", str(tmp_path / "run"), "--json", "--quiet",
           "--set", "multi_hot=1", "--set", "eval_batch_size=32", "--set", "eval_samples=64"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    for key in ("auc", "logloss", "steps", "bad_lines", "wire_bytes_per_step", "uncompressed_wire_bytes_per_step",
                "seconds"):
        assert key in out, key
    assert out["bad_lines"] == 3 and out["bad_line_numbers"] == [5, 77, 300]
    assert out["steps"] == 4 and out["bound_violations"] == 0 and 0 <= out["auc"] <= 1
    assert out["wire_bytes_per_step"] < out["uncompressed_wire_bytes_per_step"]
    assert "malformed" in proc.stderr
    assert (tmp_path / "run" / "model.json").exists() and (tmp_path / "run" / "summary.json").exists()
    bad = subprocess.run(cmd[:5] + ["--data", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "r2")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and "missing.tsv" in bad.stderr and not bad.stdout


def test_resume_after_a_kill_gives_the_same_state(tmp_path):
    from qrjax.dlrm.train import train_and_evaluate
    from qrjax.train.export import load_model_files
    from qrjax.dlrm.config import DLRMConfig

    config = get_config("tiny", {"compress": "adaptive", "steps": 4, "checkpoint_every": 2})
    full = train_and_evaluate(config, tmp_path / "a", devices=8, progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")  # killed after the checkpoint at step 2
    for f in ("model.json", "model.msgpack", "summary.json"):
        (tmp_path / "b" / f).unlink()
    resumed = train_and_evaluate(config, tmp_path / "b", devices=8, progress=False)
    assert resumed["auc"] == full["auc"] and resumed["bound_violations"] == full["bound_violations"] == 0
    _, va, _ = load_model_files(tmp_path / "a" / "model", DLRMConfig)
    _, vb, _ = load_model_files(tmp_path / "b" / "model", DLRMConfig)
    for a, b in zip(jax.tree.leaves(va), jax.tree.leaves(vb)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="devices"):
        train_and_evaluate(config, tmp_path / "a", devices=4, progress=False)
