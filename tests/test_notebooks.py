"""Every notebook in notebooks/ runs top to bottom as a plain script (jupytext percent format)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.py"))
# Notebooks whose smoke run is compile-bound, where XLA's cheap compile mode pays (measured 2-core CPU: supergen
# 33 -> 23 s, quantum 26 -> 18 s, lossy_compression 27 -> 17 s, dlrm 48 -> 31 s, clip 69 -> 52 s). watermark and
# detection are not in it: the shipped model's refined embedding runs far slower unoptimised (detection 46 -> 118 s);
# ecc does not change (17 -> 16 s).
FAST_COMPILE = {"supergen.py", "quantum.py", "lossy_compression.py", "dlrm.py", "clip.py", "lora.py"}


def test_there_are_notebooks():
    assert NOTEBOOKS
    for path in NOTEBOOKS:  # a notebook without the knob would run at full size here
        assert 'os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"' in path.read_text(), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    # every notebook reads QRJAX_NOTEBOOK_SMOKE and runs each of its cells at a smaller size
    env = dict(os.environ, MPLBACKEND="Agg", QRJAX_NOTEBOOK_SMOKE="1")
    if path.name in FAST_COMPILE:
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
