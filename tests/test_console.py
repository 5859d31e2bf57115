"""qrjax.console: the output convention every command follows."""

import io
import json

import pytest

from qrjax import console


def test_records_are_json_lines_with_status_and_error_and_counted():
    sink = io.StringIO()
    out = console.Records(sink)
    out.write(console.record(path="a.png", score=float("inf")))
    out.write(console.record(path="b.png", error="b.png: not an image"))
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert lines == [{"path": "a.png", "score": "inf", "status": "ok", "error": None},
                     {"path": "b.png", "status": "error", "error": "b.png: not an image"}]
    assert out.counts == {"ok": 1, "error": 1} and out.exit_code == 1


def test_a_record_without_status_is_refused():
    with pytest.raises(ValueError, match="status ok|error"):
        console.Records(io.StringIO()).write({"path": "a.png"})


def test_single_result_is_one_compact_line_with_json(capsys):
    console.result({"a": 1, "b": [1.5, float("nan")]}, as_json=True)
    printed = capsys.readouterr().out
    assert printed == '{"a":1,"b":[1.5,"nan"]}\n'
    console.result({"alpha": 1, "b": 2}, as_json=False)
    assert capsys.readouterr().out == "alpha: 1\n    b: 2\n"


def test_passed_over_names_the_files_on_stderr(capsys, tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    console.passed_over_in("qrjax x", tmp_path)
    captured = capsys.readouterr()
    assert captured.out == "" and "passed over 1 file(s)" in captured.err and "notes.txt" in captured.err


def test_fail_exits_with_the_named_problem():
    with pytest.raises(SystemExit, match="qrjax x: --flag 3: too big"):
        console.fail("qrjax x", "--flag 3: too big")


def test_overrides_put_the_given_flags_after_the_sets():
    assert console.overrides(["a=1", "b=2"], steps=5, seed=None, early_exit=False) == ["a=1", "b=2", "steps=5",
                                                                                       "early_exit=False"]


def test_use_devices_fails_the_command_naming_the_count():
    import jax

    console.use_devices("qrjax x", None)  # leaves the devices alone
    with pytest.raises(SystemExit, match=f"--devices {len(jax.devices()) + 1}: only"):
        console.use_devices("qrjax x", len(jax.devices()) + 1)
