"""The engine reproduces the reference decoders token for token.

* plain models: greedy tokens equal Hugging Face ``generate`` (Qwen3, Qwen2, Llama);
* TaH models: greedy tokens and per-token iteration counts equal ``TaHForCausalLM.generate``
  for Standard (never), AlwaysThink and MLP-decider models, at batch 1 and batched with
  different prompt lengths, with EOS ending rows early, depth 3, no residual, full softmax.

The engine runs with fewer rows than prompts and a small prefill chunk, so requests join and
leave between steps, prompts are prefilled in several packed chunks, and rows are compacted.
"""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_lora, tiny_model
from tah import TaHConfig, TaHForCausalLM
from tah.engine.engine import Engine
from tah.engine.sampling import SamplingParams

VOCAB = 64
LENGTHS = (5, 11, 3, 8, 14)


def make_prompts(seed: int = 1, lengths=LENGTHS) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def tah_model(decider: str, max_iter: int = 2, **overrides) -> TaHForCausalLM:
    settings = dict(
        max_iter=max_iter,
        decider=decider,
        threshold=0.5,
        topk=16,
        decider_topk=16,
        decider_layers=[0, 2, 3],
        decider_hidden_dims=[16],
    )
    config = TaHConfig(**{**settings, **overrides})
    model = TaHForCausalLM.from_base(tiny_model("qwen3", vocab_size=VOCAB), config).eval()
    randomize_lora(model)
    if decider == "mlp":  # the median continue-probability: about half the tokens iterate
        ids = torch.tensor(make_prompts(9, (40,)))
        with torch.no_grad():
            logits = model(ids, max_depth=1).decider_logits[0, :, 0]
        model.set_threshold(float(torch.sigmoid(logits).median()))
    return model


def core_batched(model, prompts, new_tokens, eos):
    """Left-padded batch through TaHForCausalLM.generate; outputs cut at EOS."""
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, eos_token_id=eos)
    return [
        _cut(out.sequences[i, width:].tolist(), out.iter_counts[i].tolist(), eos)
        for i in range(len(prompts))
    ]


def core_single(model, prompt, new_tokens, eos, **kwargs):
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=new_tokens, eos_token_id=eos, **kwargs
    )
    return _cut(out.sequences[0, len(prompt) :].tolist(), out.iter_counts[0].tolist(), eos)


def _cut(tokens, counts, eos):
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1], counts[: i + 1]
    return tokens, counts


def engine_run(engine, prompts, new_tokens, **params):
    outs = engine.generate(prompts, SamplingParams(max_tokens=new_tokens, **params))
    return [(o.token_ids, o.iter_counts) for o in outs]


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "llama"])
def test_plain_model_matches_hf_generate(family):
    hf = tiny_model(family, vocab_size=VOCAB)
    prompts = make_prompts()
    engine = Engine.from_hf_model(hf, max_batch=3, max_len=64, prefill_chunk=6, eos_token_ids=[])
    got = engine_run(engine, prompts, 12)
    for p, (tokens, counts) in zip(prompts, got):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert tokens == ref[0, len(p) :].tolist()
        assert counts == [1] * 12
    assert engine.n_rows == 0 and not engine.requests


@pytest.mark.parametrize("decider", ["never", "always", "mlp"])
def test_tah_matches_core_generate(decider):
    model = tah_model(decider)
    prompts = make_prompts()
    new = 14
    # An EOS id that the reference produces mid-way in some row, so rows end early.
    free = core_batched(model, prompts, new, [])
    eos = [free[1][0][5]]
    engine = Engine.from_tah_model(model, max_batch=3, max_len=64, prefill_chunk=5)
    engine.eos_token_ids = tuple(eos)
    got = engine_run(engine, prompts, new)
    batched = core_batched(model, prompts, new, eos)
    assert got == batched
    for p, g in zip(prompts, got):
        assert g == core_single(model, p, new, eos)
    assert any(len(t) < new for t, _ in got)  # EOS really ended some rows
    counts = [c for _, cs in got for c in cs]
    expected = {"never": {1}, "always": {2}, "mlp": {1, 2}}[decider]
    assert set(counts) == expected  # the MLP case mixes depths, so routing is exercised


def test_a_decider_reading_the_previous_token_matches_core():
    """The previous token's features cross prefill chunks, decode steps and row moves."""
    model = tah_model("mlp", decider_previous_token=True)
    prompts = make_prompts()
    new = 14
    free = core_batched(model, prompts, new, [])
    eos = [free[1][0][5]]
    expected = core_batched(model, prompts, new, eos)
    for rows, chunk in ((3, 5), (1, 1), (5, 512)):
        engine = Engine.from_tah_model(model, max_batch=rows, max_len=64, prefill_chunk=chunk)
        engine.eos_token_ids = tuple(eos)
        assert engine_run(engine, prompts, new) == expected
    assert {c for _, cs in expected for c in cs} == {1, 2}
    assert any(len(t) < new for t, _ in expected)


@pytest.mark.parametrize("decider", ["always", "mlp"])
def test_depth_three_matches_core(decider):
    model = tah_model(decider, max_iter=3)
    prompts = make_prompts(2, (4, 9, 6))
    engine = Engine.from_tah_model(
        model, max_batch=2, max_len=64, prefill_chunk=4, eos_token_ids=[]
    )
    got = engine_run(engine, prompts, 10)
    assert got == core_batched(model, prompts, 10, [])
    if decider == "mlp":
        assert len({c for _, cs in got for c in cs}) >= 2


@pytest.mark.parametrize("overrides", [{"residual": False}, {"topk": None}])
def test_variants_match_core(overrides):
    model = tah_model("mlp", **overrides)
    prompts = make_prompts(3, (7, 12))
    engine = Engine.from_tah_model(model, max_batch=2, max_len=64, eos_token_ids=[])
    got = engine_run(engine, prompts, 10)
    assert got == [core_single(model, p, 10, []) for p in prompts]


def test_schedule_does_not_change_outputs():
    """Prefill chunk size and the number of rows only change the schedule, not the tokens."""
    model = tah_model("mlp")
    prompts = make_prompts(4)
    results = []
    for rows, chunk in ((1, 1), (2, 3), (5, 512)):
        engine = Engine.from_tah_model(
            model, max_batch=rows, max_len=64, prefill_chunk=chunk, eos_token_ids=[]
        )
        results.append(engine_run(engine, prompts, 8))
    assert results[0] == results[1] == results[2]


def test_compact_decoder_logits_match_hf():
    """The compact model's depth-1 logits equal the HF forward (to float rounding)."""
    from tah.engine.kv import KVStore
    from tah.engine.model import CompactDecoder

    for family in ("qwen3", "qwen2", "llama"):
        hf = tiny_model(family, vocab_size=VOCAB)
        dec = CompactDecoder.from_hf_model(hf, max_positions=32)
        ids = torch.tensor([make_prompts(5, (17,))[0]])
        store = KVStore(3, 2, 8, 1, 32, 1)
        step = store.prefill_pass(torch.tensor([0]), torch.arange(17)[None], 17, True)
        with torch.no_grad():
            hidden, _ = dec.forward_hidden(dec.embed[ids], step.positions, step.attend)
            ours = dec.logits(hidden)
            ref = hf(ids).logits
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # torch.compile takes about half a minute on the CI CPU
def test_compiled_layer_stack_matches_core():
    model = tah_model("mlp")
    prompts = make_prompts()
    engine = Engine.from_tah_model(
        model, max_batch=3, max_len=64, prefill_chunk=5, eos_token_ids=[], compile_mode="default"
    )
    got = engine_run(engine, prompts, 10)
    assert got == core_batched(model, prompts, 10, [])
    assert {c for _, cs in got for c in cs} == {1, 2}


def test_unknown_compile_mode_is_refused():
    from tah.errors import ConfigError

    with pytest.raises(ConfigError, match="compile_mode must be one of"):
        Engine.from_tah_model(tah_model("never"), max_batch=1, compile_mode="fastest")
