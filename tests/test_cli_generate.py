"""`tah generate` end to end on a tiny checkpoint with a tokenizer."""

from __future__ import annotations

import json

import pytest

from conftest import char_tokenizer, randomize_lora, tiny_model
from tah import TaHConfig, TaHForCausalLM
from tah.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "ckpt"
    model = TaHForCausalLM.from_base(
        tiny_model("qwen3"),
        TaHConfig(
            max_iter=2, decider="mlp", threshold=0.5, decider_topk=8, decider_hidden_dims=[16]
        ),
        tokenizer=char_tokenizer(),
    )
    randomize_lora(model)
    model.save_pretrained(path)
    return path


def test_generate_json(checkpoint, capsys):
    code = main(
        [
            "generate",
            "--model",
            str(checkpoint),
            "--prompt",
            "what is 2+3?",
            "--chat",
            "--max-new-tokens",
            "6",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert 1 <= len(result["tokens"]) <= 6
    assert all(t["iterations"] in (1, 2) for t in result["tokens"])
    assert result["stats"]["tokens"] == len(result["tokens"])
    assert "".join(t["text"] for t in result["tokens"]).startswith(result["text"][:1])


def test_generate_threshold_override_and_pretty_output(checkpoint, capsys):
    assert (
        main(
            [
                "generate",
                "--model",
                str(checkpoint),
                "--prompt",
                "hi",
                "--threshold",
                "0",
                "--max-new-tokens",
                "4",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["stats"]["iter_share"] == 1.0
    assert (
        main(["generate", "--model", str(checkpoint), "--prompt", "hi", "--max-new-tokens", "4"])
        == 0
    )
    out = capsys.readouterr().out
    assert "depth:" in out and "avg depth" in out


def test_generate_bad_model_path_is_a_clean_error(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "error:" in capsys.readouterr().err


def test_end_of_turn_token_is_not_printed_with_the_bundled_model(capsys):
    # The bundled model answers "... #### 4<|im_end|>" within 30 tokens (greedy).
    args = ["generate", "--prompt", "hi", "--chat", "--max-new-tokens", "30", "--json"]
    assert main([*args, "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] and all("<|im_end|>" not in t["text"] for t in out["tokens"])
    assert main(["generate", "--prompt", "hi", "--chat", "--max-new-tokens", "30"]) == 0
    assert "<|im_end|>" not in capsys.readouterr().out


def test_no_loading_bar(capsys):
    assert main(["generate", "--prompt", "hi", "--max-new-tokens", "2"]) == 0
    assert "Loading weights" not in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a CPU-only machine")
def test_cuda_device_without_cuda_is_a_clean_error(capsys):
    assert main(["generate", "--prompt", "hi", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda:" in err and "--device cpu" in err and "Traceback" not in err


def test_tah_flags_on_a_plain_model_warn(tmp_path, caplog):
    from tah.model.loading import load_model

    plain = tmp_path / "plain"
    tiny_model("qwen3").save_pretrained(plain)
    with caplog.at_level("WARNING"):
        load_model(plain, threshold=0.3)
    assert "plain Hugging Face model" in caplog.text and "--threshold" in caplog.text
