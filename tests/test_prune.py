"""Layer pruning: finds the harmless layer, token-weighted loss, reloadable checkpoint."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch

from tah.errors import ConfigError
from tah.training.prune import (
    build_calibration,
    corpus_loss,
    layers_removed,
    prune_layers,
    save_pruned,
)
from test_label import PLAIN_TEMPLATE, SPECIALS, WORDS, make_tokenizer

HARMLESS = 2
LAYER_TYPES = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(PLAIN_TEMPLATE)


@pytest.fixture(scope="module")
def model(tok):
    """4 layers, mixed layer types; layer 2 has zero o_proj/down_proj, i.e. it is the identity."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        initializer_range=0.5,
        use_sliding_window=True,
        sliding_window=512,
        layer_types=LAYER_TYPES,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    m = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        m.model.layers[HARMLESS].self_attn.o_proj.weight.zero_()
        m.model.layers[HARMLESS].mlp.down_proj.weight.zero_()
    return m


def greedy_records(model, tok, n: int = 8, new_tokens: int = 24) -> list[dict]:
    """Records whose solutions are the model's own greedy continuations (all layers matter)."""
    rng = random.Random(0)
    banned = [tok.convert_tokens_to_ids(t) for t in SPECIALS + ["user", "assistant", "system"]]
    out = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(prompt, add_special_tokens=False).input_ids
        start = len(ids)
        with torch.no_grad():
            for _ in range(new_tokens):
                logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1]
                logits[banned] = -float("inf")  # keep the text a plain word sequence
                ids.append(int(logits.argmax()))
        out.append({"id": i, "problem": q, "solution": tok.decode(ids[start:])})
    return out


@pytest.fixture(scope="module")
def records(model, tok):
    return greedy_records(model, tok)


def test_corpus_loss_is_token_weighted(model):
    rng = np.random.default_rng(0)
    seqs = [(rng.integers(0, 40, n), rng.random(n) < 0.7) for n in (5, 40, 9, 23, 3)]
    calib = build_calibration(seqs, batch_size=2)
    loss, count = corpus_loss(model, calib)
    total = n_tok = 0.0
    for ids, target in seqs:  # brute force: one sample at a time, explicit CE
        with torch.no_grad():
            logits = model(torch.tensor(ids)[None]).logits[0]
        nll = torch.nn.functional.cross_entropy(
            logits[:-1], torch.tensor(ids[1:]), reduction="none"
        )
        keep = torch.tensor(target[1:])
        total += float(nll[keep].sum())
        n_tok += int(keep.sum())
    assert count == n_tok == calib.tokens
    assert loss == pytest.approx(total / n_tok, rel=1e-5)


def test_trial_removal_restores_the_model(model):
    ids = torch.arange(3, 20)[None]
    before = model(ids).logits
    layers = list(model.model.layers)
    with layers_removed(model, [1]):
        assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
        assert model.config.layer_types == [LAYER_TYPES[i] for i in (0, 2, 3)]
        assert not torch.equal(model(ids).logits, before)
    assert list(model.model.layers) == layers and model.config.layer_types == LAYER_TYPES
    assert model.config.num_hidden_layers == 4 and torch.equal(model(ids).logits, before)


def test_prune_removes_harmless_layer_and_reloads(tmp_path, tok, model, records):
    from transformers import AutoModelForCausalLM

    from tah.data.encoding import encode_records
    from tah.data.records import parse_record

    recs = [parse_record(r, index=i, origin="t") for i, r in enumerate(records)]
    seqs = []
    for s in encode_records(tok, recs):
        seqs.append((s.input_ids, np.arange(len(s.input_ids)) >= s.span_start))
    calib = build_calibration(seqs, batch_size=3)
    pruned = copy.deepcopy(model)
    report = prune_layers(pruned, calib, 1, progress=False)
    deltas = {s.layer: s.delta_ppl for s in report.scores}
    assert report.removed == [HARMLESS]
    assert deltas[HARMLESS] == pytest.approx(0.0, abs=1e-6)
    assert all(d > 1e-3 for layer, d in deltas.items() if layer != HARMLESS)
    assert report.pruned_ppl == pytest.approx(report.base_ppl, rel=1e-6)
    assert [m.self_attn.layer_idx for m in pruned.model.layers] == [0, 1, 2]
    assert pruned.config.layer_types == [LAYER_TYPES[i] for i in (0, 1, 3)]
    save_pruned(pruned, tok, tmp_path / "out", report)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.num_hidden_layers == 3
    assert reloaded.config.layer_types == pruned.config.layer_types
    ids = torch.tensor([seqs[0][0].tolist()])
    with torch.no_grad():
        mem, disk, orig = pruned(ids).logits, reloaded(ids).logits, model(ids).logits
    torch.testing.assert_close(disk, mem, rtol=0, atol=0)
    torch.testing.assert_close(mem, orig, rtol=1e-5, atol=1e-5)  # the removed layer was identity
    # the KV cache indexes layers by layer_idx: cached decoding must still match the original
    g_orig = model.generate(ids[:, :8], max_new_tokens=6, do_sample=False)
    g_new = reloaded.generate(ids[:, :8], max_new_tokens=6, do_sample=False)
    assert torch.equal(g_orig, g_new)
    saved = json.loads((tmp_path / "out" / "prune_report.json").read_text())
    assert saved["removed"] == [HARMLESS] and len(saved["scores"]) == 4
    assert "| 2 |" in (tmp_path / "out" / "prune_report.md").read_text()
    with pytest.raises(ConfigError, match="num_prune"):
        prune_layers(copy.deepcopy(model), calib, 4, progress=False)


def test_cli_prune_end_to_end(tmp_path, tok, model, records, capsys):
    from transformers import AutoModelForCausalLM

    from tah.cli import main

    model_dir = tmp_path / "base"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records[:6]))
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(model_dir), "--data", str(data), "--output", str(out)]
    assert main(argv + ["--no-progress", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "ΔPPL" in printed and "removed layers [2]" in printed
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 3
    assert (out / "tokenizer.json").is_file() and (out / "prune_report.md").is_file()
    assert main(argv) == 2  # output exists without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--num-prune", "4"]) == 2
    assert main(argv + ["--overwrite", "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "no records" in capsys.readouterr().err


def test_calibration_from_labels_equals_records(tmp_path, tok, model, records):
    from tah.data.labeling import LabelSettings, label_records
    from tah.data.records import load_records
    from tah.training.prune import load_calibration

    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    label_records(
        model, tok, load_records(data).records, tmp_path / "lab", LabelSettings(), progress=False
    )
    from_records = load_calibration(data, tok, max_samples=5, max_length=30)
    from_labels = load_calibration(tmp_path / "lab", tok, max_samples=5, max_length=30)
    assert from_records.tokens == from_labels.tokens > 0
    assert corpus_loss(model, from_records) == corpus_loss(model, from_labels)
    every = load_calibration(data, tok, max_samples=5, max_length=30, score="all")
    assert every.tokens == sum(min(len(ids), 30) - 1 for ids, _, _ in _seqs(every))


def _seqs(calib):
    for ids, attn, tgt in calib.batches:
        for b in range(ids.shape[0]):
            n = int(attn[b].sum())
            yield ids[b, :n], attn[b, :n], tgt[b, :n]
