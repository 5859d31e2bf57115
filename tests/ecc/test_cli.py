import json
import subprocess
import sys

import numpy as np
import pytest

from qrjax.cli import main
from qrjax.ecc.cli import bits_to_hex, hex_to_bits


def run(capsys, *argv):
    rc = main(list(argv))
    return rc, json.loads(capsys.readouterr().out)


def test_encode_then_decode_with_one_corrupted_byte(capsys):
    rc, out = run(capsys, "ecc", "encode", "--code", "qrmark-rs", "deadbeef", "00000000")
    assert rc == 0 and out["code"]["n_bits"] == 48
    codeword = out["results"][0]["codeword"]
    assert codeword.startswith("deadbeef") and len(codeword) == 12  # systematic
    corrupted = codeword[:2] + "00" + codeword[4:]
    rc, out = run(capsys, "ecc", "decode", "--code", "qrmark-rs", corrupted)
    res = out["results"][0]
    assert rc == 0 and res["ok"] and res["payload"] == "deadbeef" and res["n_corrected"] == 1


def test_every_input_is_reported_with_its_error(capsys):
    rc, out = run(capsys, "ecc", "encode", "cafef00d", "xyz", "123", "0x0000000g")
    assert rc == 1
    res = out["results"]
    assert "codeword" in res[0]
    assert "not a hexadecimal string" in res[1]["error"]
    assert "has 3 hex digits; this code needs 8" in res[2]["error"]
    assert "not a hexadecimal string" in res[3]["error"]


def test_erasures_and_bad_erasures(capsys):
    _, out = run(capsys, "ecc", "encode", "--code", "qrmark-rs", "01020304")
    cw = out["results"][0]["codeword"]
    rc, out = run(capsys, "ecc", "decode", "--code", "qrmark-rs", "--erasures", "0,5", "ff" + cw[2:10] + "ff")
    assert out["results"][0]["ok"] and out["results"][0]["payload"] == "01020304"
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


def test_python_dash_m_and_demo():
    out = subprocess.run([sys.executable, "-m", "qrjax", "ecc", "demo", "--flips", "3"], capture_output=True,
                         text=True, check=True).stdout
    assert "2 bit flip(s)" in out and "recovered" in out and "flagged uncorrectable" in out
