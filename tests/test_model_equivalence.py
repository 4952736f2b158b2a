"""The TaH forward against independent references: the plain HF model and a brute-force loop."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_lora, tiny_model
from reference_tah import brute_force_logits
from tah import TaHConfig, TaHForCausalLM

FAMILIES = ["qwen3", "qwen2", "llama"]


def left_padded_batch(lengths, vocab=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(0, vocab, (len(lengths), width), generator=gen)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, width - n :] = 1
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("how", ["never", "max_iter_1"])
def test_standard_mode_reproduces_hf_logits_and_greedy(family, how):
    hf = tiny_model(family)
    ids, mask = left_padded_batch([9, 6, 3])
    with torch.no_grad():
        ref_logits = hf(ids, attention_mask=mask).logits
        ref_gen = hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    config = (
        TaHConfig(max_iter=1) if how == "max_iter_1" else TaHConfig(max_iter=2, decider="never")
    )
    model = TaHForCausalLM.from_base(hf, config).eval()
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    valid = mask.bool()
    assert torch.allclose(out.logits[valid], ref_logits[valid], atol=1e-5)
    assert torch.equal(out.iter_counts, mask)
    res = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    assert torch.equal(res.sequences, ref_gen)
    assert res.iter_counts.eq(1).all()


@pytest.mark.parametrize("family", ["qwen3", "llama"])
@pytest.mark.parametrize("max_iter", [2, 3])
def test_fast_path_matches_brute_force(family, max_iter):
    model = TaHForCausalLM.from_base(
        tiny_model(family), TaHConfig(max_iter=max_iter, decider="label", topk=8)
    ).eval()
    randomize_lora(model)
    lengths = [7, 4, 6]
    ids, mask = left_padded_batch(lengths, seed=3)
    gen = torch.Generator().manual_seed(5)
    passes = torch.randint(1, max_iter + 1, ids.shape, generator=gen)
    passes[2] = 1  # a row with no deep token is skipped by the deeper passes
    iter_labels = passes.masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, iter_labels=iter_labels)
        for row, n in enumerate(lengths):
            cols = range(ids.shape[1] - n, ids.shape[1])
            ref = brute_force_logits(
                model, [int(ids[row, c]) for c in cols], [int(passes[row, c]) for c in cols]
            )
            for c, expected in zip(cols, ref):
                assert out.iter_counts[row, c] == passes[row, c]
                assert torch.allclose(out.logits[row, c], expected, atol=2e-5), (row, c)


@pytest.mark.parametrize("max_iter", [2, 3])
def test_parallel_forward_equals_incremental_decode(max_iter):
    model = TaHForCausalLM.from_base(
        tiny_model("qwen3", seed=2), TaHConfig(max_iter=max_iter, decider="label", topk=None)
    ).eval()
    randomize_lora(model)
    ids, mask = left_padded_batch([12, 8, 10, 12], seed=7)
    gen = torch.Generator().manual_seed(11)
    iter_labels = torch.randint(1, max_iter + 1, ids.shape, generator=gen)
    iter_labels[1, -6:] = 1  # a row that never iterates while others do
    iter_labels = iter_labels.masked_fill(mask == 0, -100)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, iter_labels=iter_labels)
        cache = model.new_cache()
        prefix = 5
        parts = [
            model(
                ids[:, :prefix],
                attention_mask=mask[:, :prefix],
                iter_labels=iter_labels[:, :prefix],
                cache=cache,
            )
        ]
        for t in range(prefix, ids.shape[1]):
            parts.append(
                model(
                    ids[:, t : t + 1],
                    attention_mask=mask[:, t : t + 1],
                    iter_labels=iter_labels[:, t : t + 1],
                    cache=cache,
                )
            )
    logits = torch.cat([p.logits for p in parts], dim=1)
    counts = torch.cat([p.iter_counts for p in parts], dim=1)
    valid = mask.bool()
    assert torch.equal(counts, full.iter_counts)
    assert torch.allclose(logits[valid], full.logits[valid], atol=1e-5)


def test_depth1_logits_do_not_depend_on_iteration_pattern():
    hf = tiny_model("qwen3", seed=4)
    ids, mask = left_padded_batch([10, 7], seed=1)
    with torch.no_grad():
        plain = hf(ids, attention_mask=mask).logits
    model = TaHForCausalLM.from_base(hf, TaHConfig(max_iter=2, decider="label", topk=8)).eval()
    randomize_lora(model)
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randint(1, 3, ids.shape, generator=gen).masked_fill(mask == 0, -100)
        with torch.no_grad():
            out = model(ids, attention_mask=mask, iter_labels=labels)
        shallow = (out.iter_counts == 1) & mask.bool()
        deep = out.iter_counts == 2
        assert shallow.any() and deep.any()
        assert torch.allclose(out.logits[shallow], plain[shallow], atol=1e-5)
        assert not torch.allclose(out.logits[deep], plain[deep], atol=1e-3)


def test_residual_off_and_full_softmax_match_brute_force():
    model = TaHForCausalLM.from_base(
        tiny_model("qwen3", seed=6),
        TaHConfig(max_iter=2, decider="label", topk=None, residual=False),
    ).eval()
    randomize_lora(model)
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(2))
    passes = torch.tensor([[1, 2, 2, 1, 2, 1]])
    with torch.no_grad():
        out = model(ids, iter_labels=passes)
        ref = brute_force_logits(model, ids[0].tolist(), passes[0].tolist())
    for t in range(6):
        assert torch.allclose(out.logits[0, t], ref[t], atol=2e-5)


def test_always_decider_iterates_every_token_and_mlp_decider_is_consistent():
    model = TaHForCausalLM.from_base(
        tiny_model("qwen3"), TaHConfig(max_iter=3, decider="always", topk=8)
    )
    ids, mask = left_padded_batch([5, 3])
    with torch.no_grad():
        out = model.eval()(ids, attention_mask=mask)
    assert torch.equal(out.iter_counts, mask * 3)
    mlp = TaHForCausalLM.from_base(
        tiny_model("qwen3"),
        TaHConfig(
            max_iter=2, decider="mlp", threshold=0.5, decider_topk=8, decider_hidden_dims=[16]
        ),
    ).eval()
    with torch.no_grad():
        out = mlp(ids, attention_mask=mask)
    logits = out.decider_logits[..., 0]
    valid = mask.bool()
    assert torch.equal(out.iter_counts[valid] == 2, torch.sigmoid(logits[valid]) > 0.5)
    assert torch.isnan(logits[~valid]).all()
    with torch.no_grad():
        none = mlp(ids, attention_mask=mask, threshold=1.0)
    assert none.iter_counts[valid].eq(1).all()
