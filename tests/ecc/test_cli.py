"""`qrjax ecc encode|decode|demo`: one JSON line per input in input order, errors named, exit codes."""

import json
import subprocess
import sys

import numpy as np
import pytest

from qrjax.cli import main
from qrjax.ecc.hexbits import bits_to_hex, hex_to_bits


def run(capsys, *argv):
    """(exit code, the JSON Lines records) of one command."""
    rc = main(list(argv))
    return rc, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_encode_then_decode_with_one_corrupted_byte(capsys):
    rc, out = run(capsys, "ecc", "encode", "--code", "qrmark-rs", "deadbeef", "00000000")
    assert rc == 0 and [r["input"] for r in out] == ["deadbeef", "00000000"]
    assert all(r["status"] == "ok" and r["error"] is None and r["code"] == "qrmark-rs" for r in out)
    codeword = out[0]["codeword"]
    assert codeword.startswith("deadbeef") and len(codeword) == 12  # systematic, 48 bits
    corrupted = codeword[:2] + "00" + codeword[4:]
    rc, out = run(capsys, "ecc", "decode", "--code", "qrmark-rs", corrupted)
    res = out[0]
    assert rc == 0 and res["ok"] and res["payload"] == "deadbeef" and res["n_corrected"] == 1


def test_every_input_is_reported_with_its_error(capsys):
    rc, res = run(capsys, "ecc", "encode", "cafef00d", "xyz", "123", "0x0000000g")
    assert rc == 1 and [r["input"] for r in res] == ["cafef00d", "xyz", "123", "0x0000000g"]
    assert [r["status"] for r in res] == ["ok", "error", "error", "error"]
    assert "codeword" in res[0] and res[0]["error"] is None
    assert "not a hexadecimal string" in res[1]["error"]
    assert "has 3 hex digits; this code needs 8" in res[2]["error"]
    assert "not a hexadecimal string" in res[3]["error"]


def test_erasures_and_bad_erasures(capsys):
    _, out = run(capsys, "ecc", "encode", "--code", "qrmark-rs", "01020304")
    cw = out[0]["codeword"]
    rc, out = run(capsys, "ecc", "decode", "--code", "qrmark-rs", "--erasures", "0,5", "ff" + cw[2:10] + "ff")
    assert out[0]["ok"] and out[0]["payload"] == "01020304"
    with pytest.raises(SystemExit, match="symbol indices must be in 0..5"):
        main(["ecc", "decode", "--code", "qrmark-rs", "--erasures", "9", cw])


@pytest.mark.parametrize("spec, match", [("rs:300,200", "n=300 is impossible"), ("rs:6,6", "k=6 is impossible"),
                                         ("bch:48,40", "no binary BCH")])
def test_impossible_codes(spec, match):
    with pytest.raises(SystemExit, match=match):
        main(["ecc", "encode", "--code", spec, "00"])


def test_hex_helpers_round_trip():
    bits = np.random.default_rng(0).integers(0, 2, 48).astype(np.uint8)
    np.testing.assert_array_equal(hex_to_bits(bits_to_hex(bits), 48, "x"), bits)
    with pytest.raises(ValueError, match="does not fit in 6 bits"):
        hex_to_bits("ff", 6, "x")


def test_python_dash_m_and_demo(capsys):
    out = subprocess.run([sys.executable, "-m", "qrjax", "ecc", "demo", "--flips", "3"], capture_output=True,
                         text=True, check=True).stdout
    assert "2 bit flip(s)" in out and "recovered" in out and "flagged uncorrectable" in out
    assert main(["ecc", "demo", "--flips", "3", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads(lines[0])
    assert len(lines) == 1 and [t["flips"] for t in summary["trials"]] == [0, 1, 2, 3]
    assert summary["trials"][0]["received"] == summary["codeword"] and summary["trials"][0]["payload_recovered"]
