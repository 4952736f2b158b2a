"""Damaged checkpoints and malformed tah_config.json fail with an error naming the file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tah.cli import main
from tah.config import TaHConfig
from tah.errors import CheckpointError, ConfigError
from tah.model.loading import bundled_model_path, load_model


@pytest.fixture
def tiny_copy(tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(bundled_model_path(), target)
    return target


def _truncate(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize(
    "relative, damage",
    [
        ("model.safetensors", "truncate"),
        ("model.safetensors", "garbage"),
        ("lora/adapter_model.safetensors", "truncate"),
        ("decider.safetensors", "garbage"),
        ("decider.safetensors", "truncate"),
    ],
)
def test_damaged_weights_name_the_file(tiny_copy, relative, damage):
    path = tiny_copy / relative
    if damage == "truncate":
        _truncate(path)
    else:
        path.write_bytes(b"\x07" * 300)
    with pytest.raises(CheckpointError, match=f"{path}.*damaged"):
        load_model(tiny_copy)


def test_damaged_plain_hf_model_names_the_file(tiny_copy):
    (tiny_copy / "tah_config.json").unlink()  # now a plain HF folder
    _truncate(tiny_copy / "model.safetensors", 0.9)
    with pytest.raises(CheckpointError, match="model.safetensors is damaged"):
        load_model(tiny_copy)


def test_generate_cli_reports_damaged_file_without_traceback(tiny_copy, capsys):
    _truncate(tiny_copy / "model.safetensors")
    code = main(["generate", "--model", str(tiny_copy), "--prompt", "hi", "--max-new-tokens", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.safetensors is damaged" in err and "Traceback" not in err


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_decider_weights_are_refused(tiny_copy, value):
    path = tiny_copy / "decider.safetensors"
    weights = load_file(str(path))
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    weights[name] = torch.full_like(weights[name], value)
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match=f"{path} holds NaN or infinite values in {name}"):
        load_model(tiny_copy)


# ---------------------------------------------------------------------- tah_config.json
@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("threshold", "high", r"threshold must be a number in \[0, 1\], got 'high' \(str\)"),
        ("threshold", None, r"threshold must be a number.*got None \(null\)"),
        ("threshold", True, r"threshold must be a number.*\(bool\)"),
        ("max_iter", "2", r"max_iter must be an integer from 1 to 16, got '2' \(str\)"),
        ("max_iter", 1000000, r"max_iter must be an integer from 1 to 16, got 1000000"),
        ("max_iter", 2.5, r"max_iter must be an integer"),
        ("topk", -3, r"topk must be an integer from 1"),
        ("residual", "yes", r"residual must be true or false"),
        ("lora_r", None, r"lora_r must be an integer"),
        ("lora_dropout", 1.5, r"lora_dropout must be a number in"),
        ("decider_hidden_dims", [64, "64"], r"decider_hidden_dims must be a non-empty list"),
        ("decider_layers", [0, -1], r"decider_layers must be a non-empty list"),
        ("lora_target_modules", 7, r"lora_target_modules must be"),
    ],
)
def test_bad_config_field_is_named_with_its_file(tiny_copy, key, value, pattern):
    path = tiny_copy / "tah_config.json"
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=pattern) as info:
        TaHConfig.load(path)
    assert str(path) in str(info.value)


def test_non_utf8_config_is_a_config_error(tiny_copy):
    path = tiny_copy / "tah_config.json"
    path.write_bytes(b'{"max_iter": 2, "decider": "\xff\xfe"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        TaHConfig.load(path)


def test_published_config_with_wrong_types_is_a_config_error():
    with pytest.raises(ConfigError, match="iter_decider_kwargs must be a JSON object"):
        TaHConfig.from_dict({"iter_decider": "MLPIterDecider", "iter_decider_kwargs": "x"})
    with pytest.raises(ConfigError, match="max_iter must be an integer"):
        TaHConfig.from_dict({"iter_decider": "MLPIterDecider", "max_iter": "lots"})
