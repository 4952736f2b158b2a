"""Backends against independent references (plain forward loops), on tiny random models."""

from __future__ import annotations

import pytest
import torch

from tah.errors import ConfigError
from tah.evaluation.backends import BackendOptions, make_backend
from tah.evaluation.prompts import render_prompt
from tah.evaluation.sampling import RowSampler, paper_sampling, warp_logits
from test_eval_helpers import one_thread, save_tiny_model, save_tiny_tah

torch.set_flush_denormal(True)
QUESTIONS = ["What is 1+1?", "Compute 12*12, please, and box it."]
GREEDY = paper_sampling(temperature=0, max_tokens=8)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_backends")
    base = save_tiny_model(root / "base", seed=0)
    return {"base": base, "tah": save_tiny_tah(root / "tah", base)}


@pytest.fixture(scope="module")
def hf(models):
    return make_backend("hf", str(models["base"]), BackendOptions(device="cpu"))


def _prompts(backend):
    return [render_prompt(backend.tokenizer, q) for q in QUESTIONS]


def _greedy_reference(model, tokenizer, prompt, n, stops):
    """Argmax loop over full forwards (no cache, no padding): the independent reference."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(ids).logits[0, -1].argmax())
            out.append(nxt)
            if nxt in stops:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_hf_greedy_matches_reference_loop(hf):
    gens = hf.generate(_prompts(hf), GREEDY, [0, 0])
    for prompt, gen in zip(_prompts(hf), gens):
        ref = _greedy_reference(hf.model, hf.tokenizer, prompt, GREEDY.max_new_tokens, hf.stops)
        assert gen.token_ids == ref
        assert gen.n_tokens == len(ref)
        assert gen.iter_counts == {"hist": {"1": len(ref)}, "avg_depth": 1.0, "iter_share": 0.0}
        assert gen.finish_reason in ("stop", "length")
        assert gen.text == hf.tokenizer.decode(ref, skip_special_tokens=True)


def test_hf_sampling_is_per_sample_not_per_batch(hf):
    params = paper_sampling(max_tokens=10)
    prompts = _prompts(hf)
    both = hf.generate(prompts, params, [11, 22])
    alone = hf.generate(prompts[1:], params, [22])
    assert both[1].token_ids == alone[0].token_ids
    assert hf.generate(prompts[:1], params, [11])[0].token_ids == both[0].token_ids
    assert hf.generate(prompts[:1], params, [12])[0].token_ids != both[0].token_ids
    assert "mean_entropy" in both[0].extra and both[0].extra["mean_entropy"] > 0


def test_row_sampler_draws_from_the_warped_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    params = paper_sampling(temperature=0.7, top_k=4, top_p=0.9)
    probs = torch.softmax(warp_logits(logits, params), -1)[0]
    n = 4000
    sampler = RowSampler(list(range(n)), "cpu")
    draws = sampler.sample(logits.expand(n, -1), params)
    freq = torch.bincount(draws, minlength=6).float() / n
    assert freq[4:].sum() == 0  # outside top-k/top-p never drawn
    assert torch.allclose(freq, probs, atol=0.03), (freq, probs)


def test_softthink_without_soft_tokens_is_plain_sampling(models, hf):
    st = make_backend(
        "softthink", str(models["base"]), BackendOptions(device="cpu", extra={"soft_scope": "none"})
    )
    params = paper_sampling(max_tokens=8)
    a = hf.generate(_prompts(hf), params, [3, 4])
    b = st.generate(_prompts(st), params, [3, 4])
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_softthink_concept_tokens_match_brute_force(models, hf):
    st = make_backend(
        "softthink",
        str(models["base"]),
        BackendOptions(device="cpu", extra={"soft_scope": "all", "soft_topk": 5}),
    )
    prompts = _prompts(st)
    gens = st.generate(prompts, GREEDY, [0, 0])
    model, table = st.model, st.model.get_input_embeddings().weight
    for prompt, gen in zip(prompts, gens):
        ids = st.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        embeds = table[ids]
        expected = []
        with torch.no_grad():
            for _ in range(GREEDY.max_new_tokens):
                logits = model(inputs_embeds=embeds).logits[0, -1]
                token = int(logits.argmax())
                expected.append(token)
                if token in st.stops:
                    break
                vals, idx = logits.topk(5)
                mix = (torch.softmax(vals, -1)[:, None] * table[idx]).sum(0)
                embeds = torch.cat([embeds, mix[None, None]], dim=1)
        assert gen.token_ids == expected
        assert gen.extra["soft_tokens"] == len(expected) - (expected[-1] in st.stops)
    assert st.info()["soft_scope"] == "all"


def test_softthink_auto_scope_uses_think_tokens(models):
    st = make_backend("softthink", str(models["base"]), BackendOptions(device="cpu"))
    assert st.scope == "think"  # the tiny tokenizer has <think> and </think>
    with pytest.raises(ConfigError, match="soft_scope"):
        make_backend(
            "softthink",
            str(models["base"]),
            BackendOptions(device="cpu", extra={"soft_scope": "x"}),
        )


def test_unknown_backend_option_is_rejected(models):
    with pytest.raises(ConfigError, match="does not understand"):
        make_backend("hf", str(models["base"]), BackendOptions(device="cpu", extra={"bogus": "1"}))
    with pytest.raises(ConfigError, match="unknown"):
        make_backend("nope", str(models["base"]))


def test_missing_engines_give_a_clear_message(models):
    for engine in ("vllm", "sglang"):
        try:
            __import__(engine)
        except ImportError:
            with pytest.raises(ConfigError, match="not installed"):
                make_backend(engine, str(models["base"]))


@pytest.fixture(scope="module")
def tah_mlp(models):
    return make_backend("tah", str(models["tah"]), BackendOptions(device="cpu", threshold=0.5))


def test_tah_backend_threshold_override(tah_mlp, hf):
    assert tah_mlp.info()["threshold"] == 0.5 and tah_mlp.info()["decider"] == "mlp"
    try:
        tah_mlp.threshold = 1.0  # sigmoid(logit) > 1 never holds: the plain model
        never = tah_mlp.generate(_prompts(tah_mlp), GREEDY, [0, 0])
        tah_mlp.threshold = 0.0  # every token continues
        low = tah_mlp.generate(_prompts(tah_mlp), GREEDY, [0, 0])
    finally:
        tah_mlp.threshold = 0.5
    plain = hf.generate(_prompts(hf), GREEDY, [0, 0])
    assert [g.token_ids for g in never] == [g.token_ids for g in plain]
    assert [g.iter_counts["iter_share"] for g in never] == [0.0, 0.0]
    assert [g.iter_counts["iter_share"] for g in low] == [1.0, 1.0]
    assert [g.token_ids for g in low] != [g.token_ids for g in plain]


def test_tah_backend_always_think(models):
    always = make_backend("tah", str(models["tah"]), BackendOptions(device="cpu", decider="always"))
    gens = always.generate(_prompts(always), GREEDY, [0, 0])
    assert all(
        g.iter_counts["iter_share"] == 1.0 and g.iter_counts["avg_depth"] == 2.0 for g in gens
    )
    assert always.info()["decider"] == "always"


def test_oracle_with_its_own_base_as_reference_never_iterates(models, hf):
    oracle = make_backend(
        "oracle", str(models["tah"]), BackendOptions(device="cpu", reference=str(models["base"]))
    )
    gens = oracle.generate(_prompts(oracle), GREEDY, [0, 0])
    assert [g.token_ids for g in gens] == [
        g.token_ids for g in hf.generate(_prompts(hf), GREEDY, [0, 0])
    ]
    assert all(g.iter_counts["iter_share"] == 0.0 for g in gens)


def test_oracle_matches_brute_force_labels(models, tmp_path):
    from transformers import AutoModelForCausalLM

    from tah import TaHForCausalLM

    # A reference that agrees with the base on some tokens and not others.
    ref = AutoModelForCausalLM.from_pretrained(models["base"])
    torch.manual_seed(3)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.3 * p.std().clamp_min(1e-3))
    ref.save_pretrained(tmp_path / "ref")
    from test_eval_helpers import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "ref")
    oracle = make_backend(
        "oracle", str(models["tah"]), BackendOptions(device="cpu", reference=str(tmp_path / "ref"))
    )
    prompt = _prompts(oracle)[1]
    gen = oracle.generate([prompt], GREEDY, [0])[0]

    tah = TaHForCausalLM.from_pretrained(str(models["tah"]), decider="label").eval()
    ids = oracle.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    expected, counts = [], []
    with torch.no_grad():
        for _ in range(GREEDY.max_new_tokens):
            ones = torch.ones_like(ids)
            d1 = tah(ids, iter_labels=ones, max_depth=1).logits.argmax(-1)
            labels = 1 + (d1 != ref(ids).logits.argmax(-1)).long()
            out = tah(ids, iter_labels=labels)
            token = int(out.logits[0, -1].argmax())
            expected.append(token)
            counts.append(int(out.iter_counts[0, -1]))
            if token in oracle.stops:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert gen.token_ids == expected
    assert gen.iter_counts["hist"] == {str(c): counts.count(c) for c in sorted(set(counts))}
    assert 0.0 < gen.iter_counts["iter_share"] < 1.0 or len(set(counts)) == 1


def test_checkpoint_generation_defaults_do_not_leak_in(models, hf, tmp_path):
    import json
    import shutil

    shutil.copytree(models["base"], tmp_path / "m")
    cfg_path = tmp_path / "m" / "generation_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(do_sample=True, temperature=1.5, top_k=3, repetition_penalty=1.5)
    cfg_path.write_text(json.dumps(cfg))
    other = make_backend("hf", str(tmp_path / "m"), BackendOptions(device="cpu"))
    for params in (GREEDY, paper_sampling(max_tokens=8)):
        a = hf.generate(_prompts(hf), params, [5, 6])
        b = other.generate(_prompts(other), params, [5, 6])
        assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_own_decode_loops_use_the_current_cache_argument(models):
    """softthink and oracle pass the KV cache under the name this transformers wants
    (``past_key_values`` is deprecated in 5.x and removed in 5.40)."""
    import warnings

    st = make_backend(
        "softthink", str(models["base"]), BackendOptions(device="cpu", extra={"soft_scope": "all"})
    )
    oracle = make_backend(
        "oracle", str(models["tah"]), BackendOptions(device="cpu", reference=str(models["base"]))
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        for backend in (st, oracle):
            gens = backend.generate(_prompts(backend), GREEDY, [0, 0])
            assert all(g.n_tokens > 0 for g in gens)
