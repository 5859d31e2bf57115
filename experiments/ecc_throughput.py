"""Reed-Solomon / BCH decoding throughput against peer libraries, and word success under i.i.d. bit errors.

    python experiments/ecc_throughput.py                      # the issue's setting: batch 65,536, 100,000 words per p
    python experiments/ecc_throughput.py --batch 512 --ber-words 2000 --rounds 1   # seconds, for a smoke test

Writes experiments/results/ecc_throughput.{json,md} and ecc_word_success.png.

Throughput: the jit-compiled batched decoder against `reedsolo` (and `galois` for BCH) on the very same corrupted words,
round by round (`qrjax.bench.interleaved`: one call of each per round after a warm-up that compiles); rates are medians
over rounds, the quoted ratio is the median over rounds of (qrjax rate / peer rate). reedsolo decodes every word
of the RS(6, 4) batch; for RS(255, 223) (reedsolo: milliseconds per word) and BCH (galois: about 5 ms per word) the
peer decodes a stated leading sample of the same batch.

Word success: BPSK over an AWGN channel whose noise makes hard decisions err with probability p, independently per bit
(exactly the i.i.d. bit-error model), so the soft decoders also get natural per-bit reliabilities (LLRs). A word
counts as a success when the 32 payload bits come out exactly right.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import norm
from tqdm.auto import tqdm

from qrjax import bench
from qrjax.ecc import BCH, DEFAULT_WATERMARK_CODE, ReedSolomon, get_code

P_VALUES = (0.005, 0.01, 0.02, 0.05)


def corrupted_words(rng, code, batch, n_errors):
    """Random codewords with n_errors[i] random symbol errors in word i."""
    q = 1 << code.symbol_bits
    msgs = rng.integers(0, q, (batch, code.k))
    words = np.asarray(code.encode(msgs)).copy()
    order = np.argsort(rng.random((batch, code.n)), axis=1)  # random distinct positions per word
    hit = np.arange(code.n)[None, :] < n_errors[:, None]
    rows, slots = np.nonzero(hit)
    words[rows, order[rows, slots]] ^= rng.integers(1, q, rows.size)
    return msgs, words


def peer_decoder(code):
    """(name, decode(words) -> messages or None per word) of the peer library for `code`."""
    if isinstance(code, ReedSolomon):
        import reedsolo

        codec = reedsolo.RSCodec(code.nsym, nsize=code.n, fcr=code.fcr, prim=code.prim, c_exp=code.m)

        def decode(words):
            out = []
            for w in words:
                try:
                    out.append(list(codec.decode(bytearray(w.tolist()))[0]))
                except reedsolo.ReedSolomonError:
                    out.append(None)
            return out

        return f"reedsolo {importlib.metadata.version('reedsolo')}", decode
    import galois

    ref = galois.BCH((1 << code.m) - 1, (1 << code.m) - 1 - (code.n - code.k))

    def decode(words):
        msgs, n_err = ref.decode(galois.GF2(words.astype(np.uint8)), errors=True)
        return [list(m) if e >= 0 else None for m, e in zip(np.asarray(msgs), np.asarray(n_err))]

    return f"galois {galois.__version__}", decode


def throughput(rng, code, batch, n_errors, rounds, peer_sample, label):
    msgs, words = corrupted_words(rng, code, batch, n_errors)
    words_dev = jnp.asarray(words)
    decode = jax.jit(lambda w: code.decode(w))  # under jit the words are traced: only their shape is checked
    peer_name, peer = peer_decoder(code)
    sample = words[:peer_sample]
    # the warm-up compiles qrjax's decoder; galois JIT-compiles (numba) on its first call, a few words are enough
    timed = bench.interleaved({"qrjax": lambda: decode(words_dev), "peer": lambda: peer(sample)}, rounds=rounds,
                              warmup_fns={"peer": lambda: peer(sample[:4])}, host={"peer"},
                              progress=f"{label} rounds")
    # per round (qrjax words/s) / (peer words/s): the peer decodes only the leading sample
    ratios = [r * batch / len(sample) for r in timed.round_ratios("peer", "qrjax")]
    res, peer_out = timed.results["qrjax"], timed.results["peer"]
    mine_ok, mine_msg = np.asarray(res.ok), np.asarray(res.message)
    agree = sum(
        (theirs is None and not mine_ok[i]) or (theirs is not None and mine_ok[i] and list(mine_msg[i]) == theirs)
        for i, theirs in enumerate(peer_out))
    return {
        "code": repr(code), "label": label, "batch": batch, "peer": peer_name, "peer_words": len(sample),
        "errors_per_word": {str(e): int(c) for e, c in zip(*np.unique(n_errors, return_counts=True))},
        "compile_s": timed.first_call_seconds["qrjax"],
        "qrjax_decodes_per_s": batch / timed.median("qrjax"),
        "peer_decodes_per_s": len(sample) / timed.median("peer"),
        "ratio_median": statistics.median(ratios), "ratio_per_round": ratios,
        "words_recovered": float(np.mean(np.all(mine_msg == msgs, axis=1))),
        "agreement_with_peer": f"{agree}/{len(sample)}",
    }


def word_success(rng, n_words, p_values):
    """Word accuracy for each decoder row and bit-error rate p."""
    codes = {name: get_code(name) for name in ("qrmark-rs", "qrmark-bch")}
    rows = {
        "raw 32 bits (no code)": None,
        "RS(6,4) hard": ("qrmark-rs", "hard"),
        "RS(6,4) soft erasures (GMD)": ("qrmark-rs", "gmd"),
        "RS(6,4) Chase-4": ("qrmark-rs", "chase"),
        "BCH(48,36) hard": ("qrmark-bch", "hard"),
        "BCH(48,36) soft erasures (GMD)": ("qrmark-bch", "gmd"),
        "BCH(48,36) Chase-4": ("qrmark-bch", "chase"),
    }
    table = {row: {} for row in rows}
    payload = rng.integers(0, 2, (n_words, 32)).astype(np.uint8)
    encoded = {name: np.asarray(code.encode(payload)) for name, code in codes.items()}
    for p in tqdm(p_values, desc="word success", leave=False):
        sigma = 1.0 / norm.isf(p)
        for row, spec in rows.items():
            if spec is None:
                noisy = payload ^ (rng.random(payload.shape) < p)
                table[row][p] = float(np.mean(np.all(noisy == payload, axis=1)))
                continue
            name, method = spec
            code, bits = codes[name], encoded[name]
            y = (2.0 * bits - 1.0) + sigma * rng.standard_normal(bits.shape)
            logits = jnp.asarray(2.0 * y / sigma ** 2, jnp.float32)
            if method == "hard":
                res = code.decode((np.asarray(logits) > 0).astype(np.uint8))
            else:
                res = code.decode_soft(logits, method=method)
            table[row][p] = float(np.mean(np.all(np.asarray(res.payload) == payload, axis=1)))
    return table


def plot(table, p_values, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row, vals in table.items():
        style = "--" if row.startswith("RS") else ("-" if row.startswith("BCH") else ":")
        ax.plot(p_values, [vals[p] for p in p_values], style, marker="o", label=row)
    ax.set_xscale("log")
    ax.set_xlabel("i.i.d. bit-error rate p")
    ax.set_ylabel("word accuracy (32 payload bits exact)")
    ax.set_title("48-bit watermark codes under independent bit errors")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--long-peer-sample", type=int, default=512,
                        help="words of the RS(255,223) batch that reedsolo decodes (it takes ms per word)")
    parser.add_argument("--bch-peer-sample", type=int, default=1024,
                        help="words of the BCH batch that galois decodes (about 5 ms per word)")
    parser.add_argument("--ber-words", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    b = args.batch

    rs64, rs255, bch = ReedSolomon(6, 4), ReedSolomon(255, 223), BCH(48, 36)
    one_in_ten = (rng.random(b) < 0.1).astype(int)
    runs = [
        throughput(rng, rs64, b, one_in_ten, args.rounds, b, "RS(6,4), 10% of words with 1 symbol error"),
        throughput(rng, rs255, b, rng.integers(0, rs255.t + 1, b), args.rounds, args.long_peer_sample,
                   "RS(255,223), 0..16 symbol errors per word (uniform)"),
        throughput(rng, bch, b, rng.integers(0, bch.t + 1, b), args.rounds, args.bch_peer_sample,
                   "BCH(48,36), 0..2 bit errors per word (uniform)"),
    ]
    table = word_success(rng, args.ber_words, P_VALUES)
    winner_hard = "qrmark-bch" if all(table["BCH(48,36) hard"][p] > table["RS(6,4) hard"][p] for p in P_VALUES) \
        else "qrmark-rs"

    info = bench.machine_info()
    payload = {"machine": info, "throughput": runs, "word_success": {r: {str(p): v for p, v in vals.items()}
                                                                     for r, vals in table.items()},
               "word_success_words": args.ber_words, "winner_hard_decoding": winner_hard,
               "default_watermark_code": DEFAULT_WATERMARK_CODE}
    md = [f"# ECC throughput and word success\n",
          f"Machine: {info['processor']}, {info['cpu_count']} cores, {info['backend']} ({info['device']}), "
          f"jax {info['jax']}, {info['date']}. Command: `python experiments/{info['command']}`.\n",
          "## Decoding throughput (same corrupted words for both decoders)\n",
          bench.markdown_table(
              ["code / errors", "batch", "qrjax decodes/s", "peer", "peer words", "peer decodes/s",
               "median ratio", "compile s", "agreement", "words recovered"],
              [[r["label"], r["batch"], f"{r['qrjax_decodes_per_s']:,.0f}", r["peer"], r["peer_words"],
                f"{r['peer_decodes_per_s']:,.0f}", f"{r['ratio_median']:,.0f}x", round(r["compile_s"], 2),
                r["agreement_with_peer"], r["words_recovered"]] for r in runs]),
          f"\n## Word accuracy under i.i.d. bit errors ({args.ber_words:,} words per cell)\n",
          bench.markdown_table(["decoder"] + [f"p = {p}" for p in P_VALUES],
                               [[row] + [vals[p] for p in P_VALUES] for row, vals in table.items()]),
          f"\nHard-decoding winner at every p: **{winner_hard}**; default watermark code: "
          f"**{DEFAULT_WATERMARK_CODE}**. Plot: `ecc_word_success.png`."]
    json_path, md_path = bench.write_results(args.out, "ecc_throughput", payload, "\n".join(md))
    plot(table, P_VALUES, f"{args.out}/ecc_word_success.png")
    print("\n".join(md))
    print(f"\nwrote {json_path}, {md_path}")
    if winner_hard != DEFAULT_WATERMARK_CODE:
        print(f"WARNING: the table favours {winner_hard} but the default is {DEFAULT_WATERMARK_CODE}")


if __name__ == "__main__":
    main()
