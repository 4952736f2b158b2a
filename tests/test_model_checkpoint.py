"""Checkpoints: our layout round-trips; the published layout (docs/method.md §12) loads."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import randomize_lora, tiny_model
from tah import TaHConfig, TaHForCausalLM
from tah.errors import CheckpointError

MLP = dict(decider="mlp", threshold=0.5, decider_topk=8, decider_hidden_dims=[16, 16], topk=8)


def make_model(seed=0):
    model = TaHForCausalLM.from_base(tiny_model("qwen3", seed=seed), TaHConfig(max_iter=2, **MLP))
    randomize_lora(model)
    return model.eval()


def test_save_load_round_trip_logits_and_generation(tmp_path):
    model = make_model()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids)
    assert before.iter_counts.eq(2).any() and before.iter_counts.eq(1).any()
    gen_before = model.generate(ids, max_new_tokens=6, eos_token_id=[])
    model.save_pretrained(tmp_path / "ckpt")
    files = set(os.listdir(tmp_path / "ckpt"))
    assert {
        "config.json",
        "model.safetensors",
        "tah_config.json",
        "decider.safetensors",
        "lora",
    } <= files
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))  # no temp dir left
    loaded = TaHForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        after = loaded(ids)
    assert torch.equal(after.iter_counts, before.iter_counts)
    assert torch.allclose(after.logits, before.logits, atol=1e-6)
    gen_after = loaded.generate(ids, max_new_tokens=6, eos_token_id=[])
    assert torch.equal(gen_after.sequences, gen_before.sequences)
    assert torch.equal(gen_after.iter_counts, gen_before.iter_counts)


def test_base_weights_load_as_plain_hf_model(tmp_path):
    from transformers import AutoModelForCausalLM

    hf = tiny_model("llama")
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        ref = hf(ids).logits
    model = TaHForCausalLM.from_base(hf, TaHConfig(max_iter=2, **MLP))
    randomize_lora(model)
    model.save_pretrained(tmp_path / "ckpt")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, ref, atol=1e-6)


def test_threshold_override_at_load_and_per_call(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "ckpt")
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    strict = TaHForCausalLM.from_pretrained(tmp_path / "ckpt", threshold=1.0).eval()
    loose = TaHForCausalLM.from_pretrained(tmp_path / "ckpt", threshold=0.0).eval()
    assert strict.config.threshold == 1.0 and float(strict.decider.threshold) == 1.0
    with torch.no_grad():
        assert strict(ids).iter_counts.eq(1).all()
        assert loose(ids).iter_counts.eq(2).all()
        assert strict(ids, threshold=0.0).iter_counts.eq(2).all()
    res = strict.generate(ids, max_new_tokens=4, threshold=0.0, eos_token_id=[])
    assert res.iter_counts.eq(2).all() and res.stats["iter_share"] == 1.0


def test_decider_override_at_load(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "ckpt")
    always = TaHForCausalLM.from_pretrained(tmp_path / "ckpt", decider="always").eval()
    with torch.no_grad():
        assert always(torch.ones(1, 4, dtype=torch.long)).iter_counts.eq(2).all()


def _published_checkpoint(model: TaHForCausalLM, root, decider_payload=None):
    """Write a directory the way the reference implementation does (appendix K)."""
    from tah.model.checkpoint import clean_base_state_dict

    root.mkdir()
    base = model.base_model
    base.config._attn_implementation = "sdpa"
    base.save_pretrained(root, state_dict=clean_base_state_dict(model))
    base.config._attn_implementation = "tah"
    model.backbone.save_pretrained(root / "lora")
    kwargs = {
        "topk": 8,
        "hidden_states_size": 32,
        "hidden_states_layer_nums": model.config.decider_layers,
        "hidden_dims": [16, 16],
        "expansion_factor": 4,
        "dropout_rate": 0.1,
        "normalize_input": False,
        "threshold": 0.8,
        "max_iter": 2,
        "dtype": {"__dtype__": True, "__str__": "torch.bfloat16"},
    }
    config = {
        "embedding_key": "model.embed_tokens",
        "max_iter": 2,
        "iter_decider": "MLPIterDecider",
        "iter_decider_kwargs": kwargs,
        "eval_iter_decider": "iter_decider",
        "eval_iter_decider_kwargs": {"threshold": 0.5},
        "input_updater_kwargs": {"topk": 8},
        "adapter": "lora",
        "adapter_kwargs": {
            "r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.1,
            "target_modules": "all-linear",
            "base_grad": True,
            "adapter_grad": True,
        },
        "train_loss": "NextTokenPredLoss",
        "output_updater": "AdditiveLogitsUpdater",
        "iter_attention_mode": "duo",
    }
    (root / "tah_config.json").write_text(json.dumps(config))
    payload = decider_payload or {
        "class": "MLPIterDecider",
        "init_args": {"topk": 8, "hidden_states_size": 32, "dtype": torch.float32},
        "state_dict": {k: v.clone() for k, v in model.decider.state_dict().items()},
    }
    torch.save(payload, root / "iter_decider.bin")
    return root


def test_published_layout_loads(tmp_path):
    model = make_model(seed=3)
    root = _published_checkpoint(model, tmp_path / "published")
    loaded = TaHForCausalLM.from_pretrained(root).eval()
    assert loaded.config.decider == "mlp" and loaded.config.threshold == 0.5
    assert loaded.config.lora_r == 16 and loaded.config.topk == 8
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model(ids), loaded(ids)
    assert torch.equal(out.iter_counts, ref.iter_counts)
    assert torch.allclose(out.logits, ref.logits, atol=1e-6)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_published_decider_pickle_with_code_is_refused(tmp_path):
    model = make_model()
    root = _published_checkpoint(model, tmp_path / "evil", decider_payload={"class": _Evil()})
    with pytest.raises(CheckpointError, match="refusing to execute pickled code"):
        TaHForCausalLM.from_pretrained(root)


@pytest.mark.parametrize(
    "missing", ["tah_config.json", "lora", "decider.safetensors", "model.safetensors"]
)
def test_missing_checkpoint_files_fail_clearly(tmp_path, missing):
    import shutil

    make_model().save_pretrained(tmp_path / "ckpt")
    target = tmp_path / "ckpt" / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CheckpointError):
        TaHForCausalLM.from_pretrained(tmp_path / "ckpt")


def test_missing_directory_and_unknown_hub_id_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        TaHForCausalLM.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="neither a local directory"):
        TaHForCausalLM.from_pretrained("nobody-here/not-a-model")
