"""BMQSim compressed mode: stage planning invariants, agreement with the dense simulator and qiskit-aer, zero-block
skipping, byte accounting, closed-form fidelity, and the error bound's effect on fidelity."""

import jax
import numpy as np
import pytest

from qrjax.compression import Compressed, decompress
from qrjax.quantum import Circuit, Gate, build, fidelity, simulate
from qrjax.quantum.compressed import CompressedConfig, CompressedState, plan_stages, simulate_compressed
from qrjax.quantum.exact import exact_amplitudes

TIGHT = CompressedConfig(block_qubits=4, group_qubits=2, bound=1e-6)


@pytest.mark.parametrize("name", ["ghz", "qft", "bv", "qaoa", "ising", "random"])
@pytest.mark.parametrize("remap", [True, False])
def test_stages_keep_every_gate_local_to_its_group(name, remap):
    circuit = build(name, 9)
    b, k = 3, 2
    stages, layout = plan_stages(circuit, b, k, remap=remap)
    assert sorted(layout) == list(range(circuit.num_qubits))
    assert sum(len(s.gates) for s in stages) == sum(1 for g in circuit.gates if g.name != "swap")
    for s in stages:
        assert len(s.globals) <= k and all(p >= b for p in s.globals) and list(s.globals) == sorted(s.globals)
        assert all(q < b + len(s.globals) for g in s.gates for q in g.qubits)
        if s.perm is not None:
            assert sorted(s.perm) == list(range(b + len(s.globals)))
    assert [g.name for s in stages for g in s.gates] == [g.name for g in circuit.gates if g.name != "swap"]


def test_remapping_cuts_stages_on_qft():
    circuit = build("qft", 16)
    with_remap, _ = plan_stages(circuit, 8, 3, remap=True)
    without, _ = plan_stages(circuit, 8, 3, remap=False)
    assert len(with_remap) < len(without)
    per_gate = sum(1 for g in circuit.gates if g.name != "swap")
    assert len(with_remap) < per_gate / 4  # a block is (de)compressed once per stage, not once per gate


@pytest.mark.parametrize("name", ["ghz", "qft", "bv", "qaoa", "ising", "random"])
def test_compressed_matches_dense_at_a_tight_bound(name):
    circuit = build(name, 9)
    dense = np.asarray(simulate(circuit))
    res = simulate_compressed(circuit, TIGHT)
    got = res.state.to_dense()
    assert fidelity(dense, got) > 1 - 1e-9
    np.testing.assert_allclose(got, dense, atol=2e-6)


def test_compressed_matches_qiskit_aer():
    qiskit = pytest.importorskip("qiskit")
    aer = pytest.importorskip("qiskit_aer")
    circuit = build("random", 10)
    from qrjax.quantum import to_qasm

    qc = qiskit.QuantumCircuit.from_qasm_str(to_qasm(circuit))  # qiskit's own reader: independent of ours
    qc.save_statevector()
    want = np.asarray(aer.AerSimulator(method="statevector").run(qc).result().get_statevector())
    got = simulate_compressed(circuit, TIGHT).state.to_dense()
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("fusion", [0, 4])
def test_fusion_width_does_not_change_the_compressed_state(fusion):
    circuit = build("random", 7)
    want = simulate_compressed(circuit, TIGHT.replace(fusion=3)).state.to_dense()
    got = simulate_compressed(circuit, TIGHT.replace(fusion=fusion)).state.to_dense()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert fidelity(want, got) > 1 - 1e-9


def test_workers_do_not_change_the_result():
    circuit = build("qaoa", 10)
    a = simulate_compressed(circuit, TIGHT.replace(workers=1)).state.to_dense()
    b = simulate_compressed(circuit, TIGHT.replace(workers=3)).state.to_dense()
    np.testing.assert_array_equal(a, b)


def test_zero_blocks_are_skipped_and_bytes_accounted():
    circuit = build("ghz", 14)
    res = simulate_compressed(circuit, CompressedConfig(block_qubits=6, group_qubits=2))
    st = res.state
    assert st.nonzero_blocks == 2 and len(st.blocks) == 2**8
    assert res.compressions < res.stages * 2**8 / 10  # only groups holding the two non-zero blocks are touched
    assert res.stored_bytes == sum(len(b) for b in st.blocks if b) == st.meter.now
    assert res.stored_bytes <= res.peak_bytes < res.raw_bytes
    assert res.summary()["compression_ratio"] == pytest.approx(res.raw_bytes / res.stored_bytes)


@pytest.mark.parametrize("name", ["ghz", "qft", "bv"])
def test_closed_form_fidelity_matches_dense_fidelity(name):
    n = 10
    circuit = build(name, n)
    res = simulate_compressed(circuit, CompressedConfig(block_qubits=4, group_qubits=2, bound=1e-2))
    idx = np.arange(2**circuit.num_qubits, dtype=np.uint64)
    ref = exact_amplitudes(name, n)(idx)
    np.testing.assert_allclose(ref, np.asarray(simulate(circuit)), atol=1e-6)  # the closed form is right
    assert res.state.fidelity_to(exact_amplitudes(name, n)) == pytest.approx(fidelity(ref, res.state.to_dense()),
                                                                             abs=1e-9)


def test_logical_indices_follow_the_layout():
    """After a run that remapped qubits, block i's amplitudes sit at logical_indices(i) of the dense state."""
    res = simulate_compressed(build("qft", 9), TIGHT)
    st = res.state
    assert st.layout != tuple(range(9))  # remapping and SWAP relabelling happened
    dense = st.to_dense()
    for i, blob in enumerate(st.blocks):
        block = np.asarray(decompress(Compressed.from_bytes(blob))) if blob else 0
        np.testing.assert_array_equal(dense[st.logical_indices(i).astype(np.int64)], block)


def test_pointwise_relative_bound_keeps_qft_fidelity():
    circuit = build("qft", 12)
    dense = np.asarray(simulate(circuit))
    f = {mode: fidelity(dense, simulate_compressed(circuit, CompressedConfig(block_qubits=7, group_qubits=3,
                                                                           bound=1e-3, mode=mode)).state.to_dense())
         for mode in ("pw_rel", "abs")}
    assert f["pw_rel"] > 0.99
    assert f["abs"] < f["pw_rel"]  # the brief's measurement: pw_rel keeps small amplitudes, abs does not


def test_complex128_state():
    circuit = build("random", 8)
    with jax.enable_x64(True):
        dense = np.asarray(simulate(circuit, dtype=np.complex128))
        res = simulate_compressed(circuit, TIGHT.replace(bound=1e-7), dtype=np.complex128)
        got = res.state.to_dense()
    outliers = sum(Compressed.from_bytes(b).num_outliers for b in res.state.blocks if b)
    assert outliers < got.size // 10  # the amplitudes really go through the complex128 codec
    assert got.dtype == np.complex128
    np.testing.assert_allclose(got, dense, atol=1e-6)  # 1e-7 per recompression, about 20 stages
    assert fidelity(dense, got) > 1 - 1e-9


def test_bad_configs_are_named():
    circuit = Circuit(6, (Gate("h", (0,)), Gate("cx", (4, 5))))
    with pytest.raises(ValueError, match="group_qubits=1"):
        plan_stages(circuit, 2, 1, remap=False)  # (with remapping, cx(4, 5) becomes half local and runs)
    with pytest.raises(ValueError, match="complex64 or complex128"):
        CompressedState(4, dtype=np.float32)
    with pytest.raises(ValueError, match="block_qubits=-1"):
        CompressedConfig(block_qubits=-1)
    with pytest.raises(ValueError, match="mode 'rel2'"):
        CompressedConfig(mode="rel2")
    with pytest.raises(ValueError, match="bound=1.5"):
        CompressedConfig(bound=1.5)
    with pytest.raises(ValueError, match="unknown preset"):
        CompressedConfig.preset("huge")
    with pytest.raises(ValueError, match="expected a Circuit"):
        simulate_compressed("ghz")
