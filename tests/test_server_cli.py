"""``tah serve``: argument parsing, loading a checkpoint from disk, and serving it."""

from __future__ import annotations

import argparse

import pytest
from fastapi.testclient import TestClient

from conftest import char_tokenizer
from tah.cli import build_parser
from tah.cli.serve import build_app
from tah.errors import ConfigError
from test_engine_equality import core_single, tah_model


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_serve_loads_a_checkpoint_and_answers(tmp_path):
    model = tah_model("mlp")
    model.tokenizer = char_tokenizer(64)
    model.save_pretrained(tmp_path / "ckpt")
    args = serve_args(
        "--model",
        str(tmp_path / "ckpt"),
        "--max-batch",
        "2",
        "--max-model-len",
        "64",
        "--max-concurrency",
        "3",
        "--max-request-bytes",
        "2000",
    )
    app = build_app(args)
    assert app.state.tah.max_concurrency == 3 and app.state.tah.max_request_bytes == 2000
    with TestClient(app) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "ckpt"
        body = {"model": "ckpt", "prompt": "add 2 and 3", "max_tokens": 10, "temperature": 0}
        out = client.post("/v1/completions", json=body).json()
    ids = model.tokenizer.encode("add 2 and 3")
    tokens, counts = core_single(model, ids, 10, [model.tokenizer.eos_token_id])
    assert out["choices"][0]["tah"]["token_ids"] == tokens
    assert out["choices"][0]["tah"]["iter_counts"] == counts


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-batch", "0"),
        ("--prefill-chunk", "0"),
        ("--body-timeout", "-1"),
        ("--port", "70000"),
        ("--threshold", "1.5"),
        ("--max-model-len", "1"),
    ],
)
def test_serve_rejects_bad_limits(tmp_path, flag, value):
    with pytest.raises(ConfigError, match=flag):
        build_app(serve_args("--model", str(tmp_path), flag, value))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tah_model("mlp")  # a context of 256 positions
    model.tokenizer = char_tokenizer(64)
    path = tmp_path_factory.mktemp("serve") / "ckpt"
    model.save_pretrained(path)
    return path


def test_max_model_len_past_the_models_context_is_refused(checkpoint):
    with pytest.raises(
        ConfigError, match=r"--max-model-len 99999 exceeds the model's context of 256"
    ):
        build_app(serve_args("--model", str(checkpoint), "--max-model-len", "99999"))


def test_cuda_on_a_cpu_only_torch_is_a_clear_error(checkpoint, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA"):
        build_app(serve_args("--model", str(checkpoint), "--device", "cuda"))


def test_missing_server_packages_say_what_to_install(monkeypatch, capsys):
    import sys

    from tah.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # what `import uvicorn` sees when absent
    assert main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "uvicorn" in err and "pip install 'tah[serve]'" in err and "Traceback" not in err


def test_loading_shows_no_progress_bar(checkpoint, capfd):
    build_app(serve_args("--model", str(checkpoint), "--max-model-len", "64"))
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out


def test_every_flag_has_help_and_a_default():
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    for action in serve._actions:
        if action.dest == "help":
            continue
        assert action.help, action.option_strings
        assert "default" in action.help, action.option_strings
    text = serve.format_help()
    assert "(default: 127.0.0.1)" in text and "(default: 8000)" in text


def test_busy_port_is_one_clear_error_before_any_announcement(tmp_path, capsys, caplog):
    """Issue 26 item 10: bind first, then announce."""
    import logging
    import socket

    from tah.cli import main

    caplog.set_level(logging.INFO)
    model = tah_model("mlp")
    model.tokenizer = char_tokenizer(64)
    model.save_pretrained(tmp_path / "ckpt")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code = main(["serve", "--model", str(tmp_path / "ckpt"), "--port", str(port)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"port {port}" in err and "already in use" in err, err
    assert not any(
        "serving" in r.getMessage() or "playground" in r.getMessage() for r in caplog.records
    )
