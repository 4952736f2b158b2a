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


def test_serve_rejects_bad_limits(tmp_path):
    with pytest.raises(ConfigError, match="max-batch"):
        build_app(serve_args("--model", str(tmp_path), "--max-batch", "0"))
