"""The depth control: a deepened base computes the base's function exactly at step 0, its new
layers can still learn, and the checkpoint it saves loads like any other."""

from __future__ import annotations

import json

import pytest
import torch

from tah.errors import CheckpointError, ConfigError

LAYERS = 2


def _base(family: str = "qwen3", seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    if family == "qwen3":
        config = Qwen3Config(head_dim=16, tie_word_embeddings=True, **common)
    elif family == "llama":  # biases on both residual writers: they must be zeroed too
        config = LlamaConfig(head_dim=16, attention_bias=True, mlp_bias=True, **common)
    else:
        config = Qwen2Config(tie_word_embeddings=False, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # biases start at zero: make them real, so zeroing them is tested
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.1)
    return model.eval()


def _batch(vocab: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, :7] = 0
    return ids, mask


def _logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _new_positions(factor: int, placement: str) -> list[int]:
    from tah.repro.deepen import layer_sources

    return [j for j, (_, new) in enumerate(layer_sources(LAYERS, factor, placement)) if new]


@pytest.mark.parametrize("family", ["qwen3", "llama", "qwen2"])
@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("placement", ["interleave", "append", "cycle"])
def test_deepened_model_computes_the_base_function(family, factor, placement):
    from tah.repro.deepen import deepen

    base = _base(family)
    deep = deepen(base, factor, placement).eval()
    ids, mask = _batch()
    assert deep.config.num_hidden_layers == factor * LAYERS == len(deep.model.layers)
    torch.testing.assert_close(
        _logits(deep, ids, mask), _logits(base, ids, mask), rtol=0, atol=1e-6
    )
    # each layer has its own KV-cache slot, and the per-layer types follow the layers
    assert [layer.self_attn.layer_idx for layer in deep.model.layers] == list(range(factor * 2))
    if getattr(base.config, "layer_types", None) is not None:
        assert len(deep.config.layer_types) == factor * LAYERS
    assert deep.config.tie_word_embeddings == base.config.tie_word_embeddings
    if base.config.tie_word_embeddings:
        assert deep.lm_head.weight.data_ptr() == deep.model.embed_tokens.weight.data_ptr()
    # and with the KV cache (generation) too
    prompt = ids[:1, :5]
    out_base = base.generate(prompt, max_new_tokens=6, do_sample=False)
    out_deep = deep.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(out_base, out_deep)


@pytest.mark.parametrize(
    ("placement", "want"),
    [("interleave", ["sliding_attention"] * 2 + ["full_attention"] * 2), ("append", None)],
)
def test_layer_types_follow_the_layers(placement, want):
    """A new layer attends like the layer it copies (sliding window here: the function hangs
    on it, the window being shorter than the batch)."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from tah.repro.deepen import deepen

    config = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        use_sliding_window=True,
        sliding_window=3,
        layer_types=["sliding_attention", "full_attention"],
    )
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    deep = deepen(base, 2, placement).eval()
    want = want or ["sliding_attention", "full_attention", "full_attention", "full_attention"]
    assert deep.config.layer_types == want
    ids, mask = _batch()
    torch.testing.assert_close(
        _logits(deep, ids, mask), _logits(base, ids, mask), rtol=0, atol=1e-6
    )


def test_layers_are_placed_and_new_layers_write_nothing():
    from tah.repro.deepen import deepen

    base = _base("llama")
    for placement, originals in (("interleave", [0, 2]), ("append", [0, 1]), ("cycle", [0, 1])):
        deep = deepen(base, 2, placement)
        new = _new_positions(2, placement)
        assert sorted(originals + new) == [0, 1, 2, 3]
        for j, i in zip(originals, range(LAYERS), strict=True):
            source = base.model.layers[i].state_dict()
            for name, value in deep.model.layers[j].state_dict().items():
                torch.testing.assert_close(value, source[name], rtol=0, atol=0)
        for j in new:
            layer = deep.model.layers[j]
            for weight in (
                layer.self_attn.o_proj.weight,
                layer.self_attn.o_proj.bias,
                layer.mlp.down_proj.weight,
                layer.mlp.down_proj.bias,
            ):
                assert weight.abs().sum() == 0
            # the rest is a copy of the layer it was made from
            src = {"append": 1, "cycle": j % LAYERS}.get(placement, j // 2)
            torch.testing.assert_close(
                layer.mlp.up_proj.weight, base.model.layers[src].mlp.up_proj.weight
            )
        for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            torch.testing.assert_close(deep.get_parameter(name), base.get_parameter(name))


def test_new_layers_learn_after_one_step():
    from tah.repro.deepen import deepen

    deep = deepen(_base("qwen3"), 2, "interleave").train()
    ids, mask = _batch()
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.SGD(deep.parameters(), lr=0.1)
    deep(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    new = [deep.model.layers[j] for j in _new_positions(2, "interleave")]
    for layer in new:
        assert layer.self_attn.o_proj.weight.grad.abs().sum() > 0
        assert layer.mlp.down_proj.weight.grad.abs().sum() > 0
        # behind the zero writers nothing moves at step 0 (the module docstring's note)
        assert layer.mlp.up_proj.weight.grad.abs().sum() == 0
    optimizer.step()
    for layer in new:
        assert layer.self_attn.o_proj.weight.abs().sum() > 0
        assert layer.mlp.down_proj.weight.abs().sum() > 0


@pytest.fixture
def base_dir(tmp_path):
    from transformers import AutoTokenizer

    from tah.model.loading import bundled_model_path

    path = tmp_path / "base"
    _base("qwen3").save_pretrained(path)
    AutoTokenizer.from_pretrained(bundled_model_path()).save_pretrained(path)
    return path


def test_deepen_checkpoint_round_trip(base_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tah.model.loading import load_model
    from tah.repro.deepen import deepen_checkpoint

    out = tmp_path / "deep"
    record = deepen_checkpoint(base_dir, out, factor=3, placement="append")
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    n_base = sum(p.numel() for p in base.parameters())
    per_layer = sum(p.numel() for p in base.model.layers[0].parameters())
    assert record == {
        "base": str(base_dir),
        "base_layers": 2,
        "layers": 6,
        "factor": 3,
        "placement": "append",
        "base_params": n_base,
        "params": n_base + 4 * per_layer,
    }
    assert json.loads((out / "deepen.json").read_text()) == record
    assert (out / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".deep.tmp-*"))  # the atomic write left nothing behind
    ids, mask = _batch()
    want = _logits(base, ids, mask)
    deep = AutoModelForCausalLM.from_pretrained(out).eval()
    assert deep.config.num_hidden_layers == 6 and len(deep.config.layer_types) == 6
    torch.testing.assert_close(_logits(deep, ids, mask), want, rtol=0, atol=1e-6)
    wrapped = load_model(out).eval()  # the plain model wrapped as a one-pass Standard model
    with torch.no_grad():
        got = wrapped(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-6)


def test_bad_arguments_are_refused(base_dir, tmp_path):
    from tah.repro.deepen import deepen, deepen_checkpoint

    base = _base("qwen3")
    for factor in (1, 0, 2.0, True):
        with pytest.raises(ConfigError, match="factor must be an integer >= 2"):
            deepen(base, factor)
    with pytest.raises(ConfigError, match="interleave, append, cycle.*'bogus'"):
        deepen(base, 2, "bogus")
    with pytest.raises(ConfigError, match="factor"):
        deepen_checkpoint(base_dir, tmp_path / "out", factor=1)
    missing = tmp_path / "no-such-model"
    with pytest.raises(CheckpointError, match=str(missing)):
        deepen_checkpoint(missing, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        deepen_checkpoint(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tah_checkpoints_and_other_families_are_refused(tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config

    from tah.errors import UnsupportedModelError
    from tah.model.loading import bundled_model_path
    from tah.repro.deepen import deepen, deepen_checkpoint

    with pytest.raises(ConfigError, match="TaH checkpoint"):
        deepen_checkpoint(bundled_model_path(), tmp_path / "out")
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2))
    with pytest.raises(UnsupportedModelError, match="'gpt2'"):
        deepen(gpt2)
