"""Resolving what users pass as ``--model``: TaH checkpoints, HF directories, hub ids, GGUF files.

GGUF files are dequantised by transformers (``gguf_file=``), which takes tens of seconds for a
real model, so the first load converts the file once into a safetensors directory in a cache
next to it (or under ``TAH_CACHE``); later loads read that directory directly.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from tah.errors import CheckpointError
from tah.io import atomic_dir

logger = logging.getLogger(__name__)


def bundled_model_path() -> Path:
    """The tiny TaH checkpoint shipped inside the package (``tah demo``'s model)."""
    return Path(__file__).resolve().parents[1] / "assets" / "tiny-tah"


def gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(
        f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    ).hexdigest()[:16]
    root = Path(os.environ.get("TAH_CACHE", Path.home() / ".cache" / "tah")) / "gguf"
    return root / f"{gguf_path.stem}-{key}"


def convert_gguf(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Dequantise a GGUF file once into a safetensors HF directory; return that directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise CheckpointError(f"GGUF file {gguf_path} does not exist")
    target = Path(cache_dir) if cache_dir else gguf_cache_dir(gguf_path)
    if (target / "config.json").is_file():
        return target
    logger.info("converting %s to safetensors in %s (once)", gguf_path.name, target)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except ImportError as exc:
        raise CheckpointError(
            f"reading GGUF needs the 'gguf' package (pip install gguf): {exc}"
        ) from None
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def load_model_from_cli(
    model: str | None,
    gguf_file: str | None = None,
    threshold: float | None = None,
    decider: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
):
    """Load whatever ``--model`` names (default: the bundled tiny checkpoint)."""
    from tah.model.checkpoint import load_model

    if model is None:
        path = bundled_model_path()
        if not (path / "tah_config.json").is_file():
            raise CheckpointError(
                "no --model given and the bundled tiny model is missing from this installation; "
                "pass --model PATH"
            )
    elif gguf_file is not None:
        path = convert_gguf(Path(model) / gguf_file)
    elif str(model).endswith(".gguf"):
        path = convert_gguf(model)
    else:
        path = model
    return load_model(path, threshold=threshold, decider=decider, device=device, dtype=dtype)
