"""Tiny Hugging Face tokenizers for the tokenizer tests, trained here with the `tokenizers` library: a byte-level BPE
(Llama 3's kind: no prefix space, exact round trip) and a Metaspace BPE (Llama 1/2's kind: "▁" marks word starts and
the start of every text). Special tokens are added after training, so their ids sit at the end of the vocabulary,
away from the byte tokenizer's 0/1/2 (an encoding that hard-wires those fails the tests)."""

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from qrjax.lora.tasks import TASKS, make_task

SPECIALS = ("<s>", "</s>", "[PAD]")
MERGED = ("sort:ab", "cd")  # the corpus makes "abcd" one token: encoded joined, it straddles the boundary


def corpus() -> list[str]:
    texts = [p + c for name in TASKS for p, c in make_task(name, num_train=100, num_val=1).train]
    return texts + ["sort:abcd=abcd"] * 50 + ["héllo wörld"] * 5


def train_tokenizer(kind: str = "bytelevel", vocab_size: int = 300) -> Tokenizer:
    """A BPE tokenizer of vocab_size learned tokens, then <s>, </s>, [PAD] (ids vocab_size .. vocab_size + 2), with
    Llama's post-processor (BOS before every text) that the example encoding must not apply."""
    tok = Tokenizer(models.BPE())
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
        tok.decoder = decoders.Metaspace(prepend_scheme="always")
        alphabet = []
    else:
        raise ValueError(kind)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    assert tok.get_vocab_size() == vocab_size
    tok.add_special_tokens(list(SPECIALS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def write_tokenizer_files(directory, tok: Tokenizer | None, config: dict | None = None,
                     tokenizer_config: dict | None = None, special_tokens_map: dict | None = None):
    """A checkpoint folder's tokenizer files (only those given)."""
    directory.mkdir(parents=True, exist_ok=True)
    if tok is not None:
        tok.save(str(directory / "tokenizer.json"))
    for name, content in (("config.json", config), ("tokenizer_config.json", tokenizer_config),
                          ("special_tokens_map.json", special_tokens_map)):
        if content is not None:
            (directory / name).write_text(json.dumps(content))
    return directory
