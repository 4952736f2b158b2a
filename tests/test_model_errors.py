"""Bad input fails early with a message that names the problem."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from tah import TaHConfig, TaHForCausalLM
from tah.errors import ConfigError, DataError, UnsupportedModelError


def test_unknown_architecture_is_refused_at_wrap_time():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(UnsupportedModelError, match="gpt2.*supported"):
        TaHForCausalLM.from_base(gpt2, TaHConfig())


def test_sliding_window_model_is_refused():
    hf = tiny_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    with pytest.raises(UnsupportedModelError, match="sliding"):
        TaHForCausalLM.from_base(hf, TaHConfig(decider="never"))


def test_decider_layer_out_of_range():
    with pytest.raises(ConfigError, match=r"decider_layers \[1, 9\] out of range.*3 layers"):
        TaHForCausalLM.from_base(
            tiny_model("qwen3"), TaHConfig(decider="mlp", decider_layers=[1, 9], decider_topk=8)
        )


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"max_iter": 0}, "max_iter must be an integer from 1 to 16"),
        ({"decider": "sometimes"}, "decider must be one of"),
        ({"threshold": 1.5}, r"threshold must be a number in \[0, 1\]"),
        ({"topk": 0}, "topk must be"),
        ({"attention_mode": "full"}, "attention_mode"),
    ],
)
def test_invalid_config_values(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TaHConfig(**kwargs)


def test_unknown_config_keys_are_named():
    with pytest.raises(ConfigError, match="unknown TaHConfig keys.*'max_iters'"):
        TaHConfig.from_dict({"max_iters": 2})


def test_prompt_longer_than_context():
    model = TaHForCausalLM.from_base(
        tiny_model("qwen3", max_position_embeddings=16), TaHConfig(decider="never")
    )
    with pytest.raises(DataError, match="does not fit the model's context of 16"):
        model.generate(torch.zeros(1, 20, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(DataError, match="context is 16 tokens"):
        model(torch.zeros(1, 20, dtype=torch.long))


def test_bad_generation_arguments():
    model = TaHForCausalLM.from_base(tiny_model("qwen3"), TaHConfig(decider="never"))
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="top_p"):
        model.generate(ids, max_new_tokens=2, do_sample=True, top_p=0.0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        model.generate(ids, max_new_tokens=-1)
    with pytest.raises(DataError, match="left-padded"):
        model.generate(ids, attention_mask=torch.tensor([[1, 1, 0]]), max_new_tokens=2)
    with pytest.raises(ConfigError, match="unknown generate"):
        model.generate(ids, max_new_tokens=2, num_beams=4)


def test_label_decider_without_labels():
    model = TaHForCausalLM.from_base(tiny_model("qwen3"), TaHConfig(decider="label"))
    with pytest.raises(ConfigError, match="needs iter_labels"):
        model(torch.zeros(1, 3, dtype=torch.long))
