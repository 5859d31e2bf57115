import json

import numpy as np
import pytest

from qrjax.clip import data
from qrjax.clip.tokenizer import EOT, PAD, SOT, SPECIALS, UNK, Tokenizer, synthetic_tokenizer, words


def test_words_lowercase_alphanumeric_runs():
    assert words("A Photo, of TWO red-circles!  3x\tOK") == ["a", "photo", "of", "two", "red", "circles", "3x", "ok"]
    assert words("") == [] and words("...") == []


def test_build_orders_by_frequency_then_alphabet_and_caps_the_size():
    captions = ["b a", "a c", "C, a!", "d", "e"]
    tok = Tokenizer.build(captions, max_size=100)
    assert tok.vocab == SPECIALS + ("a", "c", "b", "d", "e")  # a:3, c:2, then b d e (1 each) alphabetically
    assert Tokenizer.build(captions, max_size=6).vocab == SPECIALS + ("a", "c")
    assert Tokenizer.build(reversed(captions), max_size=7) == Tokenizer.build(captions, max_size=7)
    assert len(Tokenizer.build([], 10)) == 4
    with pytest.raises(ValueError, match="max_size"):
        Tokenizer.build(captions, 3)


def test_encode_layout_unknown_words_and_truncation():
    tok = Tokenizer(SPECIALS + ("a", "red", "circle"))
    ids = tok.encode(["a red circle", "a blue circle", "", "a red circle a red circle"], context_length=6)
    assert ids.dtype == np.int32 and ids.shape == (4, 6)
    a, red, circle = 4, 5, 6
    assert ids[0].tolist() == [SOT, a, red, circle, EOT, PAD]
    assert ids[1].tolist() == [SOT, a, UNK, circle, EOT, PAD]
    assert ids[2].tolist() == [SOT, EOT, PAD, PAD, PAD, PAD]
    assert ids[3].tolist() == [SOT, a, red, circle, a, EOT]  # truncated to L - 2 words, EOT kept
    assert ((ids == EOT).sum(axis=1) == 1).all()
    assert (ids[:, 0] == SOT).all()
    with pytest.raises(TypeError, match="single str"):
        tok.encode("a red circle", 6)
    with pytest.raises(ValueError, match="context_length"):
        tok.encode(["a"], 2)


def test_decode_round_trip():
    texts = ["A red circle.", "circle a red red", ""]
    tok = Tokenizer.build(texts, 16)
    for text, row in zip(texts, tok.encode(texts, 8)):
        assert tok.decode(row) == " ".join(words(text))
    assert tok.decode([SOT, UNK, tok.vocab.index("red"), EOT, tok.vocab.index("circle")]) == "<unk> red"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([SOT, 99, EOT])
    with pytest.raises(ValueError, match="one row"):
        tok.decode(np.zeros((2, 3), int))


def test_dict_round_trip_through_json_and_malformed_dicts():
    tok = Tokenizer.build(["two red circles", "a blue square"], 20)
    back = Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert back == tok and back.vocab == tok.vocab
    assert (back.encode(["a red square"], 8) == tok.encode(["a red square"], 8)).all()
    good = tok.to_dict()
    for bad, match in [([1, 2], "not a tokenizer dict"), ({"vocab": good["vocab"]}, "not a tokenizer dict"),
                       ({**good, "vocab": "abc"}, "not a tokenizer dict"),
                       ({**good, "vocab": ["a", "b", "c", "d"]}, "special tokens"),
                       ({**good, "vocab": good["vocab"] + ["red"]}, "appears twice"),
                       ({**good, "vocab": good["vocab"] + ["Red!"]}, r"\[a-z0-9\]")]:
        with pytest.raises(ValueError, match=match):
            Tokenizer.from_dict(bad)


def test_synthetic_tokenizer_covers_every_synthetic_text_within_the_tiny_vocabulary():
    tok = synthetic_tokenizer()
    assert len(tok) <= 64  # the tiny preset's vocab_size
    scenes = data.SyntheticScenes(300, 16, seed=3, noise=0.2)
    idx = np.arange(300)
    texts = (data.synthetic_texts() + scenes.captions(idx) + scenes.hard_negatives(idx)
             + data.retrieval_set(16)[1] + [t.format(c) for t in data.PROMPT_TEMPLATES for c in data.class_names()])
    ids = tok.encode(texts, 16)
    assert not (ids == UNK).any()
    assert ((ids == EOT).sum(axis=1) == 1).all()  # no synthetic text is cut (context_length 16 suffices)
    assert synthetic_tokenizer() == tok
