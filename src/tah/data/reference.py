"""The frozen reference model and its tokenizer, as `tah label` and `tah prune` load them.

Loading is transformers' own; what we add is checking before anything heavy loads (the path
exists, the config reads, the tokenizer covers the model's vocabulary) and a tokenizer
fingerprint stored with the labels, so training refuses labels made with another tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tah.errors import CheckpointError, DataError
from tah.model.loading import (
    check_model_source,
    resolve_device,
    resolve_dtype,
    resolve_model_source,
)


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """Identify a tokenizer by content: labels are only valid for the exact id mapping used."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()
    template = getattr(tokenizer, "chat_template", None) or ""
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": len(tokenizer),
        "vocab_sha256": digest,
        "chat_template_sha256": hashlib.sha256(str(template).encode("utf-8")).hexdigest(),
    }


def check_label_tokenizer(metadata: Mapping[str, Any], tokenizer: Any) -> None:
    """Raise :class:`DataError` when labels were made with a different vocabulary."""
    made = metadata.get("tokenizer") or {}
    now = tokenizer_fingerprint(tokenizer)
    if made.get("vocab_sha256") != now["vocab_sha256"]:
        raise DataError(
            f"labels were made with tokenizer {made.get('name_or_path')!r} (vocab "
            f"{made.get('vocab_size')}, sha256 {str(made.get('vocab_sha256'))[:12]}) but the "
            f"given tokenizer {now['name_or_path']!r} (vocab {now['vocab_size']}, sha256 "
            f"{now['vocab_sha256'][:12]}) differs; relabel with `tah label` using this tokenizer"
        )


def check_vocab(tokenizer: Any, embedding_rows: int, model_name: str) -> None:
    """Refuse a tokenizer whose ids index past the model's embedding matrix."""
    if len(tokenizer) > int(embedding_rows):
        raise DataError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has {len(tokenizer)} ids "
            f"but model {model_name!r} has only {embedding_rows} embedding rows; use the "
            "tokenizer that belongs to the model (--tokenizer)"
        )


def load_model_config(name_or_path: str) -> Any:
    """Read only the config (cheap), so vocabulary checks run before any weights load."""
    from transformers import AutoConfig

    name_or_path = resolve_model_source(name_or_path)
    check_model_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the model config of {name_or_path!r}: {exc}") from None


def load_causal_lm(name_or_path: str, *, dtype: str = "auto", device: str = "auto") -> Any:
    """Load a Hugging Face causal LM (local directory or hub id) in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    name_or_path = resolve_model_source(name_or_path)
    check_model_source(name_or_path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load causal LM {name_or_path!r}: {exc}") from None
    return model.to(device).eval()


def load_tokenizer(name_or_path: str, *, chat_template: str | None = None) -> Any:
    """Load a tokenizer; ``chat_template`` (a Jinja file path or string) overrides its template."""
    from transformers import AutoTokenizer

    name_or_path = resolve_model_source(name_or_path)
    check_model_source(name_or_path, needs_config=False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load tokenizer {name_or_path!r}: {exc}") from None
    if chat_template:
        path = Path(chat_template).expanduser()
        tokenizer.chat_template = (
            path.read_text(encoding="utf-8") if path.is_file() else chat_template
        )
    return tokenizer
