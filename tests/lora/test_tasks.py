import json
import operator
import pickle
import re

import numpy as np
import pytest
from tokenizers import Tokenizer

from qrjax.lora import tasks
from qrjax.lora.tasks import (BOS, BYTE, EOS, PAD, TASKS, VOCAB_SIZE, ByteTokenizer, Grid, GridPoint, HFTokenizer, Task,
                              decode_tokens, default_grid, encode_examples, encode_text, example_tokens, fit_seq_len,
                              load_grid, load_jsonl_task, make_task, pretrain_examples, resolve_task)
from tests.lora.hf_tokenizer import MERGED, train_tokenizer

# ---------------------------------------------------------------------------------------------------------------
# Tokenizer and encoding


def test_tokenizer_round_trip_including_non_ascii():
    assert (PAD, BOS, EOS, VOCAB_SIZE) == (0, 1, 2, 259)
    for text in ["", "abc", "37+58=95", "héllo wörld", "日本語 ✓ 🚀", "\x00\xff"]:
        ids = encode_text(text)
        assert ids == [b + 3 for b in text.encode("utf-8")]
        assert all(3 <= i < VOCAB_SIZE for i in ids)
        assert decode_tokens(ids) == text
        assert decode_tokens(np.array([BOS, *ids, EOS, 100, 101, PAD], np.int32)) == text  # stops at EOS
    assert decode_tokens([PAD, BOS, 3 + ord("a"), PAD, 3 + ord("b")]) == "ab"  # PAD and BOS skipped anywhere
    assert decode_tokens([]) == ""
    cut = encode_text("é")[:1]  # half a two-byte character, as a generation may end
    assert decode_tokens(cut) == "\ufffd"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode_tokens([BOS, 259])
    with pytest.raises(ValueError, match="one row"):
        decode_tokens(np.zeros((2, 3), int))
    with pytest.raises(TypeError, match="str"):
        encode_text(b"abc")


def test_encode_examples_by_hand():
    a, b, c, x, y = (3 + ord(ch) for ch in "abcxy")
    out = encode_examples([("ab", "c"), ("", "xy"), ("abcx", "y")], seq_len=6)
    assert {k: v.dtype for k, v in out.items()} == {"inputs": np.int32, "targets": np.int32, "mask": np.float32}
    assert all(v.shape == (3, 6) for v in out.values())
    # row 0: seq = BOS a b c EOS PAD PAD
    assert out["inputs"][0].tolist() == [BOS, a, b, c, EOS, PAD]
    assert out["targets"][0].tolist() == [a, b, c, EOS, PAD, PAD]
    assert out["mask"][0].tolist() == [0, 0, 1, 1, 0, 0]
    # row 1: an empty prompt, the loss starts at the first target
    assert out["inputs"][1].tolist() == [BOS, x, y, EOS, PAD, PAD]
    assert out["targets"][1].tolist() == [x, y, EOS, PAD, PAD, PAD]
    assert out["mask"][1].tolist() == [1, 1, 1, 0, 0, 0]
    # row 2: exactly seq_len + 1 tokens, no padding left
    assert out["inputs"][2].tolist() == [BOS, a, b, c, x, y]
    assert out["targets"][2].tolist() == [a, b, c, x, y, EOS]
    assert out["mask"][2].tolist() == [0, 0, 0, 0, 1, 1]
    assert example_tokens(("abcx", "y")) == 6
    with pytest.raises(ValueError, match=r"example 1 \('abcxy' -> 'z'\) needs seq_len 7, longer than seq_len 6"):
        encode_examples([("a", "b"), ("abcxy", "z")], 6)
    with pytest.raises(ValueError, match="seq_len"):
        encode_examples([("a", "b")], 0)
    with pytest.raises(TypeError, match="example 0"):
        encode_examples([("a", 3)], 8)
    assert encode_examples([], 4)["inputs"].shape == (0, 4)


def test_encode_examples_mask_selects_exactly_the_completion_and_eos():
    examples = make_task("recall", num_train=40, num_val=1).train + make_task("sort", num_train=40, num_val=1).train
    out = encode_examples(examples, 48)
    for row, (prompt, completion) in enumerate(examples):
        m = out["mask"][row].astype(bool)
        picked = out["targets"][row][m]
        assert picked[-1] == EOS and decode_tokens(picked) == completion
        assert m.sum() == len(completion.encode()) + 1
        assert decode_tokens(out["inputs"][row][:m.argmax() + 1]) == prompt  # the inputs up to the first loss
        assert (out["inputs"][row][1:] == out["targets"][row][:-1]).all()


def test_fit_seq_len():
    assert fit_seq_len([("a", "b")]) == 8
    assert fit_seq_len([("abcd", "efg")]) == 8  # needs exactly 8
    assert fit_seq_len([("abcd", "efgh")]) == 16
    assert fit_seq_len([("abcd", "efgh")], multiple=3) == 9
    with pytest.raises(ValueError, match="no examples"):
        fit_seq_len([])


# ---------------------------------------------------------------------------------------------------------------
# Built-in tasks


def check_arithmetic(prompt, completion):
    m = re.fullmatch(r"(\d{1,2})([+-])(\d{1,2})=", prompt)
    assert m, prompt
    op = {"+": operator.add, "-": operator.sub}[m[2]]
    assert int(completion) == op(int(m[1]), int(m[3])) and completion == str(int(completion))


def check_reverse(prompt, completion):
    m = re.fullmatch(r"reverse:([a-z]{3,8})=", prompt)
    assert m, prompt
    assert completion == "".join(reversed(m[1]))


def check_sort(prompt, completion):
    m = re.fullmatch(r"sort:([a-z]{3,10}|[0-9]{3,10})=", prompt)
    assert m, prompt
    assert sorted(completion) == sorted(m[1])
    assert all(completion[i] <= completion[i + 1] for i in range(len(completion) - 1))


def check_recall(prompt, completion):
    m = re.fullmatch(r"((?:[a-z]=\d,){2,7}[a-z]=\d);([a-z])\?", prompt)
    assert m, prompt
    pairs = [p.split("=") for p in m[1].split(",")]
    table = dict(pairs)
    assert len(table) == len(pairs)  # distinct keys: the query has one answer
    assert completion == table[m[2]]


CHECKS = {"arithmetic": check_arithmetic, "reverse": check_reverse, "sort": check_sort, "recall": check_recall}


@pytest.fixture(scope="module")
def built_in():
    return {name: make_task(name, num_train=600, num_val=60, seed=3) for name in TASKS}


def test_task_names():
    assert TASKS == tuple(CHECKS)


@pytest.mark.parametrize("name", TASKS)
def test_built_in_completions_are_correct(built_in, name):
    task = built_in[name]
    assert task.name == name and len(task.train) == 600 and len(task.val) == 60 and task.bad_lines == ()
    for prompt, completion in task.train + task.val:
        CHECKS[name](prompt, completion)


@pytest.mark.parametrize("name", TASKS)
def test_built_in_splits_are_disjoint_deterministic_and_seeded(built_in, name):
    task = built_in[name]
    prompts = [p for p, _ in task.train + task.val]
    assert len(set(prompts)) == len(prompts)  # distinct, so train and val share nothing
    assert make_task(name, num_train=600, num_val=60, seed=3) == task
    other = make_task(name, num_train=600, num_val=60, seed=4)
    assert other.train != task.train and other.val != task.val
    # the val set of a seed does not move with num_train
    assert make_task(name, num_train=50, num_val=60, seed=3).val == task.val


@pytest.mark.parametrize("name", TASKS)
def test_built_in_seq_len_is_the_smallest_multiple_of_8_that_fits(built_in, name):
    task = built_in[name]
    need = max(len(p.encode()) + len(c.encode()) + 1 for p, c in task.train + task.val)
    assert task.seq_len % 8 == 0 and task.seq_len - 8 < need <= task.seq_len
    assert task.encode("val")["inputs"].shape == (60, task.seq_len)
    with pytest.raises(ValueError, match="longer than seq_len"):
        make_task(name, num_train=600, num_val=60, seed=3, seq_len=need - 1)
    assert make_task(name, num_train=600, num_val=60, seed=3, seq_len=need).seq_len == need


def test_built_in_tasks_differ_in_length_and_content(built_in):
    lengths = {name: np.mean([example_tokens(e) for e in t.train]) for name, t in built_in.items()}
    assert lengths["arithmetic"] < 10 < lengths["reverse"] < lengths["recall"]
    assert built_in["arithmetic"].seq_len < built_in["recall"].seq_len
    train = built_in["arithmetic"].train
    assert {re.fullmatch(r"\d+([+-])\d+=", p)[1] for p, _ in train} == {"+", "-"}
    assert any(c.startswith("-") for _, c in train) and any(len(c) == 3 for _, c in train)  # borrows and carries
    sorts = [w for p, _ in built_in["sort"].train for w in [p[5:-1]]]
    assert any(w.isdigit() for w in sorts) and any(w.isalpha() for w in sorts)


def test_make_task_errors():
    with pytest.raises(ValueError, match=r"unknown task 'copy'; choose from \['arithmetic', 'reverse', 'sort', "):
        make_task("copy")
    with pytest.raises(ValueError, match="num_train"):
        make_task("sort", num_train=0)
    with pytest.raises(ValueError, match="num_val"):
        make_task("sort", num_val=0)
    with pytest.raises(ValueError, match="seed"):
        make_task("sort", seed=-1)
    # two-digit arithmetic has 2 * 100 * 100 distinct prompts
    with pytest.raises(ValueError, match="distinct examples"):
        make_task("arithmetic", num_train=20_000, num_val=1)


def test_task_validates_its_examples():
    with pytest.raises(ValueError, match="needs train and val"):
        Task("t", (("a", "b"),), (), 8)
    with pytest.raises(ValueError, match="val example 0"):
        Task("t", (("a", "b"),), (("a" * 20, "b"),), 8)
    with pytest.raises(ValueError, match="split"):
        Task("t", (("a", "b"),), (("a", "c"),), 8).encode("test")


# ---------------------------------------------------------------------------------------------------------------
# JSONL tasks


def write_lines(path, lines):
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def test_load_jsonl_reports_every_bad_line(tmp_path):
    good = [{"prompt": f"q{i}:", "completion": f"a{i}"} for i in range(20)]
    lines = [json.dumps(r) for r in good[:5]] + [
        '{"prompt": "x", "completion": ',  # 6: bad JSON
        json.dumps({"prompt": "x"}),  # 7: missing completion
        json.dumps({"completion": "y"}),  # 8: missing prompt
        json.dumps({"prompt": "x", "completion": 3}),  # 9: not a string
        json.dumps({"prompt": "x", "completion": ""}),  # 10: empty completion
        json.dumps({"prompt": "x" * 30, "completion": "y"}),  # 11: too long for max_seq_len 24
        "",  # 12: blank, skipped
        json.dumps(["x", "y"]),  # 13: not an object
        b'{"prompt": "\xff", "completion": "y"}',  # 14: not UTF-8
    ] + [json.dumps(r) for r in good[5:]] + [json.dumps({"prompt": "é", "completion": "ü", "extra": 1})]
    path = write_lines(tmp_path / "mine.jsonl", lines)
    task = load_jsonl_task(path, max_seq_len=24, val_fraction=0.2, seed=1)
    assert task.name == "mine"
    reasons = [line.split(": ", 1) for line in task.bad_lines]
    assert [where for where, _ in reasons] == [f"{path}:{n}" for n in (6, 7, 8, 9, 10, 11, 13, 14)]
    expected = ["bad JSON", "missing field 'completion'", "missing field 'prompt'", "field 'completion' is int",
                "empty completion", "too long: needs seq_len 32, more than max_seq_len 24", "expected a JSON object",
                "not UTF-8"]
    for (_, reason), want in zip(reasons, expected):
        assert reason.startswith(want), (reason, want)
    examples = [(r["prompt"], r["completion"]) for r in good] + [("é", "ü")]
    assert sorted(task.train + task.val) == sorted(examples)
    assert not set(task.train) & set(task.val)
    assert len(task.val) == round(0.2 * 21)
    assert task.seq_len == 8  # "q19:" + "a19" + 1 = 8
    assert load_jsonl_task(path, max_seq_len=24, val_fraction=0.2, seed=1) == task
    assert load_jsonl_task(path, max_seq_len=24, val_fraction=0.2, seed=2).val != task.val
    assert load_jsonl_task(path, max_seq_len=24, name="other").name == "other"
    # an explicit seq_len is the limit: the 8-token records fit, none longer
    assert load_jsonl_task(path, seq_len=8).bad_lines[5].endswith("more than seq_len 8")
    with_7 = load_jsonl_task(path, seq_len=7)
    assert len(with_7.bad_lines) == 8 + 10  # and "q10:".."q19:", which need 8 (the blank line is not counted)


def test_load_jsonl_keeps_copies_of_one_example_on_one_side(tmp_path):
    records = [{"prompt": f"p{i % 4}", "completion": "c"} for i in range(12)]
    task = load_jsonl_task(write_lines(tmp_path / "dup.jsonl", [json.dumps(r) for r in records]), val_fraction=0.25)
    assert len(task.val) == 1 and len(task.train) == 9 and not set(task.train) & set(task.val)


def test_load_jsonl_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl_task(tmp_path / "nope.jsonl")
    empty = write_lines(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match=r"empty.jsonl: needs at least 2 distinct good records .* found 0$"):
        load_jsonl_task(empty)
    bad = write_lines(tmp_path / "bad.jsonl", ["{", "[]", "{}", "3", '{"prompt": "a", "completion": "b"}'])
    with pytest.raises(ValueError, match=r"bad.jsonl: .* found 1; bad lines: .*bad.jsonl:1: bad JSON.*\(4 bad lines\)"):
        load_jsonl_task(bad)
    with pytest.raises(ValueError, match="val_fraction"):
        load_jsonl_task(bad, val_fraction=1.0)


def test_resolve_task(tmp_path):
    assert resolve_task("reverse", 5) == make_task("reverse", seed=5)
    path = write_lines(tmp_path / "t.jsonl", [json.dumps({"prompt": f"{i}", "completion": "x"}) for i in range(5)])
    assert resolve_task(str(path), 2) == load_jsonl_task(path, seed=2)
    with pytest.raises(ValueError, match=r"unknown task 'revers'; choose from \['arithmetic'"):
        resolve_task("revers")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        resolve_task(str(tmp_path / "missing.jsonl"))


# ---------------------------------------------------------------------------------------------------------------
# Pre-training corpus


def test_pretrain_examples_are_correct_and_differ_from_the_tuning_tasks():
    examples = pretrain_examples(3000, seed=0)
    assert examples == pretrain_examples(3000, seed=0) and examples != pretrain_examples(3000, seed=1)
    seen = set()
    for prompt, completion in examples:
        skill, arg = re.fullmatch(r"([a-z]+):(.*)=", prompt).groups()
        seen.add(skill)
        if skill == "copy":
            assert completion == arg and 1 <= len(arg) <= 8
        elif skill == "next":
            assert int(completion) == int(arg) + 1
        elif skill == "upper":
            assert arg.isalpha() and arg.islower() and completion == arg.upper()
        elif skill == "shift":
            assert completion == "".join("a" if ch == "z" else chr(ord(ch) + 1) for ch in arg)
        elif skill == "add":
            x, y = arg.split("+")
            assert int(completion) == int(x) + int(y)
            assert all(int(p) + int(q) <= 9 for p, q in zip(reversed(x), reversed(y)))  # no column carries
        elif skill == "count":
            assert completion == str(len(arg))
        else:
            raise AssertionError(f"unexpected skill {skill!r}")
        for check in CHECKS.values():  # no pre-training example is an example of a tuning task
            with pytest.raises(AssertionError):
                check(prompt, completion)
    assert seen == set(tasks.PRETRAIN_SKILLS)
    assert pretrain_examples(0) == []


# ---------------------------------------------------------------------------------------------------------------
# Grid


def test_default_grid_and_configs_order():
    grid = default_grid()
    assert len(grid) == 24 and len(set(grid.points)) == 24
    assert {p[0] for p in grid.points} == set(tasks.DEFAULT_LRS)
    assert {p[1] for p in grid.points} == {2, 4, 8} and {p[2] for p in grid.points} == {4, 8}
    assert grid.points[:3] == ((1e-3, 2, 4), (1e-3, 2, 8), (1e-3, 4, 4))  # lr-major product
    configs = grid.configs(["sort", "recall"])
    assert len(configs) == 48
    assert [c.index for c in configs] == list(range(48))
    assert [c.task for c in configs] == ["sort"] * 24 + ["recall"] * 24
    assert [(c.lr, c.rank, c.batch) for c in configs[24:]] == list(grid.points)
    assert configs[25] == GridPoint("recall", 1e-3, 2, 8, 25) and configs[25].label == "recall/lr=0.001/r=2/b=8"
    with pytest.raises(TypeError, match="single str"):
        grid.configs("sort")
    with pytest.raises(ValueError, match="repeat"):
        grid.configs(["sort", "sort"])


def test_load_grid_product_and_list(tmp_path):
    product = tmp_path / "p.json"
    product.write_text(json.dumps({"lr": [1e-3, 1], "rank": [2, 4, 8], "batch": [1, 2, 4, 8]}))
    grid = load_grid(product)
    assert len(grid) == 2 * 3 * 4 and grid == Grid.product([1e-3, 1.0], [2, 4, 8], [1, 2, 4, 8])
    listed = tmp_path / "l.json"
    listed.write_text(json.dumps({"configs": [{"lr": 0.01, "rank": 4, "batch": 2}, {"lr": 3e-4, "rank": 2,
                                                                                    "batch": 1}]}))
    assert load_grid(listed).points == ((0.01, 4, 2), (3e-4, 2, 1))


@pytest.mark.parametrize("spec, match", [
    ({"lr": [1e-3, -1], "rank": [2], "batch": [4]}, r"lr\[1\] must be a positive finite number, got -1"),
    ({"lr": [1e-3], "rank": [2.5], "batch": [4]}, r"rank\[0\] must be a positive integer, got 2.5"),
    ({"lr": [1e-3], "rank": [2], "batch": [True]}, r"batch\[0\] must be a positive integer, got True"),
    ({"lr": [1e-3], "rank": [2]}, "missing field 'batch'"),
    ({"lr": [], "rank": [2], "batch": [4]}, "'lr' must be a non-empty list"),
    ({"lr": [1e-3, 1e-3], "rank": [2], "batch": [4]}, "'lr' repeats a value"),
    ({"lr": [1e-3], "rank": [2], "batch": [4], "epochs": [3]}, r"unknown fields \['epochs'\]"),
    ({"configs": [{"lr": 1e-3, "rank": 2, "batch": 4}], "lr": [1]}, "not both"),
    ({"configs": [{"lr": 1e-3, "rank": 2, "batch": 4}, {"lr": "fast", "rank": 2, "batch": 4}]},
     r"configs\[1\].lr must be a positive finite number, got 'fast'"),
    ({"configs": [{"lr": 1e-3, "rank": 2}]}, r"configs\[0\] must be an object with exactly"),
    ({"configs": [{"lr": 1e-3, "rank": 2, "batch": 4}] * 2}, r"configs\[1\] repeats configs\[0\]"),
    ({"configs": []}, "'configs' must be a non-empty list"),
    ([1, 2], "expected a JSON object"),
])
def test_load_grid_errors_name_the_file_and_the_field(tmp_path, spec, match):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=f"grid file {re.escape(str(path))}: .*{match}"):
        load_grid(path)


def test_load_grid_bad_json_and_missing_file(tmp_path):
    path = tmp_path / "g.json"
    path.write_text('{"lr": [1e-3,')
    with pytest.raises(ValueError, match="g.json: not JSON"):
        load_grid(path)
    with pytest.raises(FileNotFoundError, match="none.json"):
        load_grid(tmp_path / "none.json")


def test_grid_validates_points():
    with pytest.raises(ValueError, match="no configurations"):
        Grid(())
    with pytest.raises(ValueError, match="point 0 rank must be a positive integer, got 0"):
        Grid(((1e-3, 0, 4),))
    with pytest.raises(ValueError, match="appears twice"):
        Grid(((1e-3, 2, 4), (1e-3, 2, 4)))
    with pytest.raises(ValueError, match=r"grid: batch\[1\] must be a positive integer, got 2.5"):
        Grid.product([1e-3], [2], [4, 2.5])


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers: the byte tokenizer object, Hugging Face tokenizer.json


def test_byte_tokenizer_is_the_module_level_one():
    assert (BYTE.vocab_size, BYTE.pad_id, BYTE.bos_id, BYTE.eos_id) == (VOCAB_SIZE, PAD, BOS, EOS) == (259, 0, 1, 2)
    assert ByteTokenizer() == BYTE and hash(ByteTokenizer()) == hash(BYTE)
    assert BYTE.encode("héllo") == encode_text("héllo") and BYTE.decode([BOS, *encode_text("é"), EOS, 9]) == "é"
    examples = make_task("recall", num_train=30, num_val=1).train
    default, explicit = encode_examples(examples, 40), encode_examples(examples, 40, BYTE)
    assert all((default[k] == explicit[k]).all() for k in default)
    assert make_task("recall", num_train=30, num_val=1).tokenizer == BYTE


@pytest.fixture(scope="module")
def hf():
    return train_tokenizer("bytelevel")


@pytest.fixture(scope="module")
def hf_tok(hf):
    return HFTokenizer(hf, bos_id=hf.token_to_id("<s>"), eos_id=hf.token_to_id("</s>"), name="test")


def lib_ids(tok, text):
    """The library's own encoding of a text, without its BOS template."""
    return tok.encode(text, add_special_tokens=False).ids


def test_hf_tokenizer_ids_vocab_and_decode(hf, hf_tok):
    bos, eos, pad = (hf.token_to_id(t) for t in ("<s>", "</s>", "[PAD]"))
    assert (bos, eos, pad) == (300, 301, 302)
    assert (hf_tok.bos_id, hf_tok.eos_id, hf_tok.pad_id, hf_tok.vocab_size) == (bos, eos, eos, 303)  # pad -> eos
    assert hf.encode("37+58=").ids[0] == bos  # the file's post-processor adds BOS ...
    assert hf_tok.encode("37+58=") == lib_ids(hf, "37+58=") and bos not in hf_tok.encode("37+58=")  # ... encode not
    for text in ["reverse:abc=", "héllo wörld", "", "x y  z"]:
        ids = hf_tok.encode(text)
        assert ids == lib_ids(hf, text) and hf_tok.decode(ids) == text  # byte-level BPE: an exact round trip
        assert hf_tok.decode([bos, *ids, eos, *lib_ids(hf, "tail")]) == text  # BOS skipped, stops at EOS
    assert hf_tok.decode(np.array([bos, *lib_ids(hf, "ab"), pad, *lib_ids(hf, "cd")])) == "abcd"  # pad id skipped
    named = HFTokenizer(hf, bos_id="<s>", eos_id="</s>", pad_id="[PAD]")
    assert (named.bos_id, named.eos_id, named.pad_id) == (bos, eos, pad) and named != hf_tok
    assert HFTokenizer(hf, bos_id=bos, eos_id=eos, name="elsewhere") == hf_tok  # the name is not compared
    assert hash(HFTokenizer(hf, bos_id=bos, eos_id=eos)) == hash(hf_tok) and hf_tok != BYTE
    assert pickle.loads(pickle.dumps(hf_tok)) == hf_tok
    with pytest.raises(ValueError, match=r"tokenizer test: eos_id must be an id of its vocabulary \(0..302\), got 303"):
        HFTokenizer(hf, bos_id=bos, eos_id=303, name="test")
    with pytest.raises(ValueError, match=r"pad_id '<pad>' is not a token of its vocabulary"):
        HFTokenizer(hf, bos_id=bos, eos_id=eos, pad_id="<pad>")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        hf_tok.decode([303])
    with pytest.raises(TypeError, match="str"):
        hf_tok.encode(b"ab")


def test_hf_tokenizer_switches_off_truncation_and_padding(hf, tmp_path):
    truncating = Tokenizer.from_str(hf.to_str())
    truncating.enable_truncation(max_length=3)
    truncating.enable_padding(length=40, pad_id=302, pad_token="[PAD]")
    truncating.save(str(tmp_path / "tokenizer.json"))
    tok = HFTokenizer.from_file(tmp_path / "tokenizer.json", bos_id="<s>", eos_id="</s>")
    text = "reverse:abcdefg=gfedcba"
    assert len(lib_ids(hf, text)) > 3 and tok.encode(text) == lib_ids(hf, text)
    assert truncating.truncation is not None  # the caller's object is left alone
    assert HFTokenizer(truncating, bos_id="<s>", eos_id="</s>").encode(text) == lib_ids(hf, text)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not a Hugging Face tokenizer.json"):
        HFTokenizer.from_file(tmp_path / "bad.json", bos_id=0, eos_id=0)
    with pytest.raises(FileNotFoundError, match="none.json"):
        HFTokenizer.from_file(tmp_path / "none.json", bos_id=0, eos_id=0)


def test_encode_examples_with_a_hf_tokenizer_by_hand(hf, hf_tok):
    bos, eos = hf_tok.bos_id, hf_tok.eos_id
    examples = [("37+58=", "95"), ("reverse:abc=", "cba"), MERGED, ("", "héllo wörld")]
    parts = [(lib_ids(hf, p), lib_ids(hf, c)) for p, c in examples]
    seq_len = max(len(p) + len(c) + 1 for p, c in parts) + 2
    out = encode_examples(examples, seq_len, hf_tok)
    for row, (p, c) in enumerate(parts):
        seq = [bos, *p, *c, eos] + [eos] * (seq_len + 1 - len(p) - len(c) - 2)  # padded with pad_id = eos
        assert out["inputs"][row].tolist() == seq[:-1] and out["targets"][row].tolist() == seq[1:]
        assert out["mask"][row].tolist() == [0] * len(p) + [1] * (len(c) + 1) + [0] * (seq_len - len(p) - len(c) - 1)
        assert example_tokens(examples[row], hf_tok) == len(p) + len(c) + 1
        picked = out["targets"][row][out["mask"][row] == 1]
        assert picked[-1] == eos and hf_tok.decode(picked) == examples[row][1]
    # the prompt and the completion are encoded apart: joined, this example's text has a token across the boundary
    p, c = parts[2]
    assert lib_ids(hf, "".join(MERGED)) != p + c
    assert out["inputs"][2][1:1 + len(p) + len(c)].tolist() == p + c
    need = len(parts[1][0]) + len(parts[1][1]) + 1
    with pytest.raises(ValueError, match=rf"example 1 \('reverse:abc=' -> 'cba'\) needs seq_len {need}, longer than "):
        encode_examples([("a", "b"), examples[1]], need - 1, hf_tok)
    with pytest.raises(TypeError, match="tokenizer must be"):
        encode_examples(examples, seq_len, "gpt2")


def test_tasks_with_a_hf_tokenizer(hf, hf_tok, tmp_path):
    task = make_task("sort", num_train=200, num_val=20, seed=1, tokenizer=hf_tok)
    byte_task = make_task("sort", num_train=200, num_val=20, seed=1)
    assert task.train == byte_task.train and task.val == byte_task.val and task.tokenizer == hf_tok
    assert task != byte_task
    need = max(len(lib_ids(hf, p)) + len(lib_ids(hf, c)) + 1 for p, c in task.train + task.val)
    assert task.seq_len % 8 == 0 and task.seq_len - 8 < need <= task.seq_len < byte_task.seq_len
    assert fit_seq_len(task.train + task.val, tokenizer=hf_tok) == task.seq_len
    val = task.encode("val")
    assert all((val[k] == encode_examples(task.val, task.seq_len, hf_tok)[k]).all() for k in val)
    wide = task.encode("train", task.seq_len + 8)  # the engine's common length: more padding, nothing else
    narrow = task.encode("train")
    assert wide["inputs"].shape == (200, task.seq_len + 8)
    assert all((wide[k][:, :task.seq_len] == narrow[k]).all() for k in narrow)
    assert (wide["inputs"][:, task.seq_len:] == hf_tok.pad_id).all() and not wide["mask"][:, task.seq_len:].any()
    with pytest.raises(ValueError, match=r"task 'sort' val: example \d+ .* needs seq_len"):
        task.encode("val", need - 1)
    with pytest.raises(ValueError, match="longer than seq_len"):
        make_task("sort", num_train=200, num_val=20, seed=1, seq_len=need - 1, tokenizer=hf_tok)
    assert resolve_task("sort", 1, num_train=200, num_val=20, tokenizer=hf_tok) == task
    # JSONL lengths are counted in the tokenizer's tokens
    records = [{"prompt": f"reverse:{w}=", "completion": w[::-1]} for w in ("abc", "abcd", "pqrs", "lmnop")]
    path = write_lines(tmp_path / "r.jsonl", [json.dumps(r) for r in records])
    needs = [len(lib_ids(hf, r["prompt"])) + len(lib_ids(hf, r["completion"])) + 1 for r in records]
    cut = sorted(needs)[1]  # keeps the two shortest (and any tied with them)
    loaded = load_jsonl_task(path, seq_len=cut, tokenizer=hf_tok)
    assert len(loaded.train) + len(loaded.val) == sum(n <= cut for n in needs) and loaded.tokenizer == hf_tok
    assert all(f"more than seq_len {cut}" in line for line in loaded.bad_lines)
    assert resolve_task(str(path), 0, tokenizer=hf_tok) == load_jsonl_task(path, tokenizer=hf_tok)


def test_metaspace_tokenizer_marks_the_completions_start():
    sp = train_tokenizer("metaspace")
    tok = HFTokenizer(sp, bos_id="<s>", eos_id="</s>", pad_id="[PAD]")
    out = encode_examples([("37+58=", "95")], 16, tok)
    picked = out["targets"][0][out["mask"][0] == 1]
    assert picked[:-1].tolist() == lib_ids(sp, "95") and sp.id_to_token(int(picked[0])).startswith("\u2581")
    assert tok.decode(picked) == "95"
    assert (out["inputs"][0][1 + len(lib_ids(sp, "37+58=")) + len(picked):] == tok.pad_id).all()
