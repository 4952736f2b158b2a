"""Hard-token labelling: equals a brute-force per-sample loop, batch-invariant, resumable."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from conftest import QWEN3_SKIP, QWEN3_TOKENIZER
from tah.data.encoding import encode_records
from tah.data.label_features import build_features, load_labels, load_training_dataset
from tah.data.labeling import LabelSettings, label_records
from tah.data.records import Record
from tah.errors import ConfigError, DataError

WORDS = [f"w{i}" for i in range(40)]
SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# ChatML with a <think> opener in every assistant turn, like Qwen3's thinking template.
THINK_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "<|im_start|>assistant\n<think>\n{{ m['content'] }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(template: str = THINK_TEMPLATE):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + ["user", "assistant", "system"] + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<think>", "</think>"],
    )
    tok.chat_template = template
    return tok


def make_model(vocab_size: int, seed: int = 0, layers: int = 2):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        initializer_range=0.5,  # confident predictions: argmax is far from ties
    )
    return Qwen3ForCausalLM(cfg).eval()


def make_records(n: int, seed: int = 0, lo: int = 2, hi: int = 60) -> list[Record]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
        s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
        out.append(Record(index=i, record_id=f"r{i}", question=q, solution=s))
    return out


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return make_model(len(tok))


def brute_force(model, tok, record: Record) -> dict[str, np.ndarray]:
    """One sample, no padding, full logits, explicit argmax compare; span from known structure."""
    msgs = [
        {"role": "user", "content": record.question},
        {"role": "assistant", "content": record.solution},
    ]
    ids = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    mismatch = [int(logits[i].argmax()) != ids[i + 1] for i in range(len(ids) - 1)] + [False]
    last_turn = max(i for i, t in enumerate(ids) if t == tok.convert_tokens_to_ids("<|im_start|>"))
    think = ids.index(tok.convert_tokens_to_ids("<think>"), last_turn)
    mask = [int(i >= think) for i in range(len(ids))]
    return {"input_ids": np.array(ids), "mask": np.array(mask), "mismatch": np.array(mismatch, int)}


def rows_by_id(path) -> dict[int, dict]:
    data, _ = load_labels(path)
    return {row["data_id"]: row for row in data}


def test_labels_equal_brute_force_loop(tmp_path, tok, model):
    records = make_records(11)
    rep = label_records(
        model,
        tok,
        records,
        tmp_path / "lab",
        LabelSettings(batch_size=4, shard_size=4),
        progress=False,
    )
    assert rep.complete and rep.samples == 11 and rep.shards_total == 3
    rows = rows_by_id(tmp_path / "lab")
    assert sorted(rows) == list(range(11))
    total_hard = total_tokens = 0
    for rec in records:
        ref, row = brute_force(model, tok, rec), rows[rec.index]
        np.testing.assert_array_equal(row["input_ids"], ref["input_ids"])
        np.testing.assert_array_equal(row["mask"], ref["mask"])
        np.testing.assert_array_equal(row["mismatch"], ref["mismatch"])
        assert row["record_id"] == rec.record_id and row["mismatch"][-1] == 0
        total_hard += int(ref["mismatch"].sum())
        total_tokens += len(ref["input_ids"])
    assert rep.tokens == total_tokens and rep.hard_tokens == total_hard
    # the confident random model agrees with the data sometimes, so both labels occur
    assert 0 < total_hard < total_tokens
    meta = json.loads((tmp_path / "lab" / "tah_labels.json").read_text())
    assert meta["complete"] and meta["tokenizer"]["vocab_size"] == len(tok)
    assert meta["stats"]["supervised_hard_ratio"] == pytest.approx(rep.supervised_hard_ratio)


def test_batching_and_padding_do_not_change_labels(tmp_path, tok, model):
    records = make_records(8, seed=3, lo=1, hi=120)  # very different lengths in one batch
    s1 = LabelSettings(batch_size=1, shard_size=8, entropy=True)
    s4 = LabelSettings(batch_size=4, shard_size=8, entropy=True, max_batch_tokens=10_000)
    label_records(model, tok, records, tmp_path / "b1", s1, progress=False)
    label_records(model, tok, records, tmp_path / "b4", s4, progress=False)
    r1, r4 = rows_by_id(tmp_path / "b1"), rows_by_id(tmp_path / "b4")
    for i in r1:
        assert r1[i]["mismatch"] == r4[i]["mismatch"] and r1[i]["mask"] == r4[i]["mask"]
        np.testing.assert_allclose(r1[i]["entropy"], r4[i]["entropy"], atol=1e-4)


def test_resume_after_interruption_gives_identical_shards(tmp_path, tok, model):
    records = make_records(10, seed=5)
    settings = LabelSettings(batch_size=3, shard_size=3)
    full = label_records(model, tok, records, tmp_path / "full", settings, progress=False)
    seen: list[int] = []
    part = label_records(
        model,
        tok,
        records,
        tmp_path / "part",
        settings,
        progress=False,
        max_shards=2,
        on_shard=seen.append,
    )
    assert seen == [0, 1] and not part.complete and part.shards_written == 2
    with pytest.raises(DataError, match="incomplete"):
        load_labels(tmp_path / "part")
    # a run killed mid-shard leaves at most a hidden temp dir; resume ignores it
    (tmp_path / "part" / "shards" / ".shard-00002.tmp-dead").mkdir()
    rest = label_records(model, tok, records, tmp_path / "part", settings, progress=False)
    assert rest.complete and rest.shards_reused == 2 and rest.shards_written == 2
    assert not (tmp_path / "part" / "shards" / ".shard-00002.tmp-dead").exists()
    assert (rest.samples, rest.hard_tokens) == (full.samples, full.hard_tokens)
    a, _ = load_labels(tmp_path / "full")
    b, _ = load_labels(tmp_path / "part")
    assert a.to_list() == b.to_list()
    # a different plan in the same directory is refused unless --overwrite
    other = LabelSettings(batch_size=3, shard_size=3, max_length=20, truncate=True)
    with pytest.raises(DataError, match="different run"):
        label_records(model, tok, records, tmp_path / "part", other, progress=False)
    label_records(model, tok, records, tmp_path / "part", other, progress=False, overwrite=True)
    assert all(len(r) <= 20 for r in load_labels(tmp_path / "part")[0]["input_ids"])


def test_length_policy_drop_vs_truncate(tmp_path, tok, model):
    records = make_records(6, seed=1, lo=30, hi=40) + make_records(3, seed=2, lo=2, hi=5)
    records = [Record(i, r.record_id, r.question, r.solution) for i, r in enumerate(records)]
    drop = label_records(
        model, tok, records, tmp_path / "d", LabelSettings(max_length=25), progress=False
    )
    assert drop.dropped_too_long == 6 and drop.samples == 3 and drop.truncated == 0
    cut = label_records(
        model,
        tok,
        records,
        tmp_path / "t",
        LabelSettings(max_length=25, truncate=True),
        progress=False,
    )
    assert cut.truncated == 6 and cut.samples == 9 and cut.dropped_too_long == 0
    rows = rows_by_id(tmp_path / "t")
    ref = brute_force(model, tok, records[0])
    assert len(rows[0]["input_ids"]) == 25 and rows[0]["mismatch"][-1] == 0
    np.testing.assert_array_equal(rows[0]["mismatch"][:24], ref["mismatch"][:24])
    with pytest.raises(DataError, match="no samples left"):
        label_records(
            model, tok, records[:6], tmp_path / "e", LabelSettings(max_length=25), progress=False
        )
    with pytest.raises(ConfigError, match="batch_size"):
        label_records(
            model, tok, records, tmp_path / "x", LabelSettings(batch_size=0), progress=False
        )


def test_span_starts_at_think_only_when_present():
    tok = make_tokenizer(PLAIN_TEMPLATE)
    recs = [Record(0, "a", "w1 w2", "w3 w4 <think> w5 </think> w6"), Record(1, "b", "w1", "w7 w8")]
    with_think, without = encode_records(tok, recs), encode_records(tok, recs, think_token=None)
    think = tok.convert_tokens_to_ids("<think>")
    ids = with_think[0].input_ids.tolist()
    assert with_think[0].span_start == ids.index(think)
    content = ids.index(tok.convert_tokens_to_ids("w3"))
    assert without[0].span_start == content and content < ids.index(think)
    # no <think> in the assistant turn: supervision starts at the first content token
    ids1 = with_think[1].input_ids.tolist()
    assert with_think[1].span_start == ids1.index(tok.convert_tokens_to_ids("w7"))
    # a <think> inside the question is never taken as the start of the assistant turn
    q = [Record(0, "c", "w1 <think> w2", "w3 w4")]
    ids2 = encode_records(tok, q)[0]
    assert ids2.span_start == ids2.input_ids.tolist().index(tok.convert_tokens_to_ids("w3"))


@pytest.mark.skipif(not QWEN3_TOKENIZER.is_dir(), reason=QWEN3_SKIP)
def test_qwen3_tokenizer_think_span_and_labels(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(QWEN3_TOKENIZER))
    recs = [
        Record(0, "a", "What is 2+2?", "<think>\nTwo plus two.\n</think>\n\nThe answer is 4."),
        Record(1, "b", "Name a colour.", "Blue."),
    ]
    enc = encode_records(tok, recs)
    ids0 = enc[0].input_ids.tolist()
    assert ids0[enc[0].span_start] == 151667  # <think>
    assert ids0[enc[0].span_start - 2 : enc[0].span_start] == tok.encode("assistant\n")
    ids1 = enc[1].input_ids.tolist()
    assert tok.decode(ids1[enc[1].span_start :]).startswith("Blue.")
    model = make_model(len(tok), layers=1)
    rep = label_records(
        model, tok, recs, tmp_path / "q", LabelSettings(batch_size=2), progress=False
    )
    rows = rows_by_id(tmp_path / "q")
    assert rep.complete and rows[0]["mask"].index(1) == enc[0].span_start
    ref = brute_force_generic(model, ids0)
    assert rows[0]["mismatch"] == ref


def brute_force_generic(model, ids: list[int]) -> list[int]:
    with torch.no_grad():
        pred = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
    return [int(pred[i] != ids[i + 1]) for i in range(len(ids) - 1)] + [0]


def test_chunked_head_path_equals_full_logits(tok, model):
    from tah.data import labeling

    ids = torch.randint(0, len(tok), (3, 17), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    attn[1, 9:] = 0
    assert labeling._head_path_ok(model)  # Qwen3: lm_head(decoder(x)) is exactly the logits
    fast = labeling.next_token_stats(model, ids, attn, entropy=True, nll=True, chunk_size=5)
    labeling._HEAD_OK[model] = False  # force the plain full-logits path
    try:
        slow = labeling.next_token_stats(model, ids, attn, entropy=True, nll=True)
    finally:
        labeling._HEAD_OK[model] = True
    logits = model(ids, attention_mask=attn).logits.float()
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"
    )
    valid_next = (attn[:, :-1] * attn[:, 1:]).bool()
    for res in (fast, slow):
        assert torch.equal(res["pred"][attn.bool()], logits.argmax(-1)[attn.bool()])
        torch.testing.assert_close(
            res["nll"][:, :-1][valid_next], nll[valid_next], atol=1e-4, rtol=1e-4
        )
        assert (
            float(res["nll"][:, -1].abs().sum()) == 0 and float(res["nll"][1, 8:].abs().sum()) == 0
        )
    torch.testing.assert_close(fast["entropy"], slow["entropy"], atol=1e-4, rtol=1e-4)


def test_vocab_mismatch_is_refused(tmp_path, tok):
    small = make_model(len(tok) - 5)
    with pytest.raises(DataError, match="embedding rows"):
        label_records(small, tok, make_records(2), tmp_path / "v", progress=False)


# ------------------------------------------------------------------ training features


def test_build_features_iteration_labels():
    row = {
        "data_id": 7,
        "input_ids": [10, 11, 12, 13, 14, 15],
        "mask": [0, 0, 1, 1, 1, 1],
        "mismatch": [1, 0, 1, 0, 1, 0],
    }
    f = build_features(row, max_iter=2)
    assert f["labels"] == [-100, -100, 12, 13, 14, 15]
    assert f["iter_labels"] == [1, 1, 2, 1, 2, 1]  # prompt mismatch at 0 is ignored
    assert f["attention_mask"] == [1] * 6 and f["input_ids"] == row["input_ids"]
    assert build_features(row, strategy="all", max_iter=3)["iter_labels"] == [1, 1, 3, 3, 3, 3]
    assert build_features(row, max_iter=1)["iter_labels"] == [1] * 6
    assert build_features(row, query_iter=2)["iter_labels"][:2] == [2, 2]
    assert build_features(row, max_length=4)["iter_labels"] == [1, 1, 2, 1]
    # D > 2: seeded uniform draws in [2, D], reproducible per (seed, data_id)
    long_row = {
        "data_id": 3,
        "input_ids": list(range(400)),
        "mask": [1] * 400,
        "mismatch": [1, 0] * 200,
    }
    a = build_features(long_row, max_iter=4, seed=1)["iter_labels"]
    assert a == build_features(long_row, max_iter=4, seed=1)["iter_labels"]
    assert a != build_features(long_row, max_iter=4, seed=2)["iter_labels"]
    assert set(a[0::2]) == {2, 3, 4} and set(a[1::2]) == {1}
    # "extra iterations" encoding: mismatch value v > 1 means depth v + 1
    extra = dict(row, mismatch=[0, 0, 2, 0, 1, 0])
    assert build_features(extra, max_iter=3)["iter_labels"] == [1, 1, 3, 1, 2, 1]
    with pytest.raises(DataError, match="extra iterations"):
        build_features(extra, max_iter=2)
    with pytest.raises(ConfigError):
        build_features(row, strategy="random")


def test_training_loader_filters_and_checks_tokenizer(tmp_path, tok, model):
    # long questions: truncation to 12 tokens leaves some rows without any supervised token
    rng = random.Random(0)
    recs = [
        Record(
            i, f"r{i}", " ".join(rng.choice(WORDS) for _ in range(2 + 6 * (i % 3))), "w1 w2 w3 w4"
        )
        for i in range(9)
    ]
    label_records(model, tok, recs, tmp_path / "l", LabelSettings(batch_size=4), progress=False)
    data, _ = load_labels(tmp_path / "l")
    ds = load_training_dataset(tmp_path / "l", tokenizer=tok, max_length=12)
    expected = sum(any(m and h for m, h in zip(r["mask"][:12], r["mismatch"][:12])) for r in data)
    assert 0 < len(ds) == expected < len(data)
    item = ds[0]
    assert set(item) == {"input_ids", "attention_mask", "labels", "iter_labels"}
    assert len(item["input_ids"]) <= 12 and 2 in item["iter_labels"]
    dropped = load_training_dataset(tmp_path / "l", max_length=13, length_action="drop")
    assert len(dropped) == sum(len(r) <= 13 for r in data["input_ids"])
    assert all(len(x["input_ids"]) <= 13 for x in dropped)
    with pytest.raises(DataError, match="no training rows"):
        load_training_dataset(tmp_path / "l", max_length=12, length_action="drop")
    with pytest.raises(DataError, match="differs"):
        load_training_dataset(tmp_path / "l", tokenizer=make_tokenizer_with_extra_word())
    with pytest.raises(ConfigError):
        load_training_dataset(tmp_path / "l", length_action="cut")


def make_tokenizer_with_extra_word():
    tok = make_tokenizer()
    tok.add_tokens(["zzz"])
    return tok


# ------------------------------------------------------------------ CLI


def test_cli_label_end_to_end(tmp_path, tok, model, capsys):
    from tah.cli import main

    model_dir = tmp_path / "ref"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"id": f"q{r.index}", "problem": r.question, "solution": r.solution})
        for r in make_records(5)
    ]
    data.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    out = tmp_path / "labels"
    argv = ["label", "--data", str(data), "--model", str(model_dir), "--output", str(out)]
    assert main(argv + ["--no-progress"]) == 2
    assert f"{data}:4" in capsys.readouterr().err
    assert main(argv + ["--no-progress", "--skip-bad-records", "--shard-size", "2"]) == 0
    rows, meta = load_labels(out, tokenizer=tok)
    assert len(rows) == 5 and meta["plan"]["skipped_records"] == 1
    assert sorted(rows["record_id"]) == [f"q{i}" for i in range(5)]
    assert "hard-token ratio" in capsys.readouterr().out
    small = tmp_path / "small"
    make_model(len(tok) - 3).save_pretrained(small)
    tok.save_pretrained(small)
    assert (
        main(
            [
                "label",
                "--data",
                str(data),
                "--model",
                str(small),
                "--output",
                str(tmp_path / "s"),
                "--skip-bad-records",
            ]
        )
        == 2
    )
    assert "embedding rows" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert main(argv + ["--batch-size", "0"]) == 2
    assert main(argv + ["--dtype", "float8"]) == 2
    capsys.readouterr()
    missing = ["--output", str(tmp_path / "x"), "--model", str(tmp_path / "nope")]
    assert main([*argv[:-2], *missing, "--skip-bad-records"]) == 2
    assert f"no model at {tmp_path / 'nope'}" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(argv + ["--device", "cuda"]) == 2
        assert "--device cuda: " in capsys.readouterr().err


def test_samples_longer_than_the_models_context_are_skipped_by_default(tmp_path, tok):
    short_context = make_model(len(tok))
    short_context.config.max_position_embeddings = 25
    records = make_records(6, seed=1, lo=30, hi=40) + make_records(3, seed=2, lo=2, hi=5)
    records = [Record(i, r.record_id, r.question, r.solution) for i, r in enumerate(records)]
    report = label_records(short_context, tok, records, tmp_path / "d", progress=False)
    assert report.dropped_too_long == 6 and report.samples == 3 and report.complete
    cut = label_records(
        short_context, tok, records, tmp_path / "t", LabelSettings(truncate=True), progress=False
    )
    assert cut.truncated == 6 and cut.samples == 9
    assert max(len(r["input_ids"]) for r in rows_by_id(tmp_path / "t").values()) == 25


def test_damaged_shard_is_named_and_relabelled_after_removal(tmp_path, tok, model):
    import shutil

    records = make_records(6, seed=3, lo=2, hi=8)
    settings = LabelSettings(shard_size=3)
    label_records(model, tok, records, tmp_path / "l", settings, progress=False)
    shard = tmp_path / "l" / "shards" / "shard-00001"
    arrow = next(shard.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    with pytest.raises(DataError, match=f"label shard {shard} is damaged.*delete that folder"):
        load_labels(tmp_path / "l")
    shutil.rmtree(shard)
    label_records(model, tok, records, tmp_path / "l", settings, progress=False)
    rows, _ = load_labels(tmp_path / "l")
    assert len(rows) == 6
