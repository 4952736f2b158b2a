"""The backend interface every evaluation method implements, and the helpers they share.

A backend turns already-templated prompts into :class:`Generation` records. The concrete
backends live in ``backends.py`` (hf, tah, scripted and the factory), ``softthink.py``,
``oracle.py`` and ``engines.py``; they all import this module, and only the factory imports them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tah.errors import CheckpointError, ConfigError
from tah.evaluation.prompts import has_chat_template
from tah.model.sampling import SamplingParams


@dataclass
class Generation:
    """One generated answer. ``iter_counts`` summarises passes per generated token."""

    text: str
    token_ids: list[int]
    n_tokens: int
    iter_counts: dict[str, Any]
    time_s: float
    finish_reason: str = "stop"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def iter_summary(counts: Sequence[int]) -> dict[str, Any]:
    """Histogram and means of per-token pass counts (zeros, i.e. padding, are ignored)."""
    valid = [int(c) for c in counts if int(c) > 0]
    hist: dict[str, int] = {}
    for c in valid:
        hist[str(c)] = hist.get(str(c), 0) + 1
    n = len(valid)
    return {
        "hist": dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
        "avg_depth": (sum(valid) / n) if n else 0.0,
        "iter_share": (sum(1 for c in valid if c > 1) / n) if n else 0.0,
    }


@dataclass
class BackendOptions:
    """Everything a backend may need besides the model path; unknown ``extra`` keys are errors."""

    device: str = "auto"
    dtype: str = "auto"
    threshold: float | None = None
    iter_budget: float | None = None  # share of generated tokens that iterate (steers τ)
    decider: str | None = None
    reference: str | None = None
    trust_remote_code: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def take(self, key: str, default: Any, cast: type = str) -> Any:
        """Pop one backend-specific option, converted to ``cast``."""
        if key not in self.extra:
            return default
        raw = self.extra.pop(key)
        try:
            if cast is bool:
                return str(raw).lower() in ("1", "true", "yes", "on")
            return cast(raw)
        except ValueError as exc:
            raise ConfigError(f"--backend-option {key}={raw!r}: expected {cast.__name__}") from exc

    def reject_unused(self, backend: str) -> None:
        if self.extra:
            raise ConfigError(
                f"backend {backend!r} does not understand options {sorted(self.extra)}"
            )


class Backend:
    """Interface: ``generate(prompts, params, seeds) -> list[Generation]`` plus metadata."""

    name = "base"
    seeding = "per-sample"
    tokenizer: Any = None
    # Longest sequence (prompt + generated) the model takes; None = unbounded or unknown.
    context_length: int | None = None

    def generate(
        self,
        prompts: Sequence[str] | Sequence[list[int]],
        params: SamplingParams,
        seeds: Sequence[int],
    ) -> list[Generation]:
        raise NotImplementedError

    def stream(
        self,
        prompts: Sequence[str] | Sequence[list[int]],
        params: SamplingParams,
        seeds: Sequence[int],
        budgets: Sequence[int],
        batch_size: int,
    ) -> Iterator[tuple[int, Generation]] | None:
        """Continuous batching: ``(index, Generation)`` per prompt as each one finishes, with
        ``budgets[i]`` (>= 1) new tokens at most for prompt ``i``; None = this backend
        generates batch by batch through :meth:`generate` instead."""
        return None

    def token_budgets(self, prompts: Sequence[str] | Sequence[list[int]], limit: int) -> list[int]:
        """New tokens each prompt may get: ``limit``, capped by what its own prompt leaves of
        the context (never by its batch neighbours); 0 = the prompt alone fills the context."""
        if self.context_length is None or self.tokenizer is None:
            return [limit] * len(prompts)
        return [
            max(0, min(limit, self.context_length - n))
            for n in prompt_lengths(self.tokenizer, prompts)
        ]

    def info(self) -> dict[str, Any]:
        """Facts recorded in the run (model path, parameter count, device ...)."""
        return {"backend": self.name, "seeding": self.seeding}

    def close(self) -> None:
        """Release models and engines."""


# ---------------------------------------------------------------------------------- helpers
def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise CheckpointError(f"{path}: could not load a tokenizer ({exc})") from exc
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """EOS ids: the tokenizer's, the model's generation config's, and the chat end-of-turn token."""
    ids: list[int] = []

    def add(value: Any) -> None:
        if value is None:
            return
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))

    add(getattr(tokenizer, "eos_token_id", None))
    gen_cfg = getattr(model, "generation_config", None)
    add(getattr(gen_cfg, "eos_token_id", None))
    template = getattr(tokenizer, "chat_template", None) or ""
    for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        if marker in template:
            tid = tokenizer.convert_tokens_to_ids(marker)
            if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
                add(tid)
    if not ids:
        raise CheckpointError(
            "the tokenizer defines no eos token; set eos_token in tokenizer_config.json"
        )
    return ids


def prompt_lengths(tokenizer: Any, prompts: Sequence[str] | Sequence[list[int]]) -> list[int]:
    """Token count of each prompt, tokenised as :func:`encode_prompts` does."""
    return [len(ids) for ids in prompt_token_ids(tokenizer, prompts)]


def prompt_token_ids(
    tokenizer: Any, prompts: Sequence[str] | Sequence[list[int]]
) -> list[list[int]]:
    """Each prompt's token ids (templated text gets no extra special tokens)."""
    if prompts and not isinstance(prompts[0], str):
        return [list(map(int, p)) for p in prompts]
    add_special = not has_chat_template(tokenizer)
    return [list(tokenizer(p, add_special_tokens=add_special)["input_ids"]) for p in prompts]


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str] | Sequence[list[int]], device: Any
) -> tuple[Any, Any]:
    """Left-padded (input_ids, attention_mask); templated text gets no extra special tokens."""
    import torch

    rows = prompt_token_ids(tokenizer, prompts)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def cut_at_stop(ids: Sequence[int], stops: Sequence[int]) -> tuple[list[int], str]:
    """Generated ids up to and including the first stop token; the finish reason."""
    out: list[int] = []
    for t in ids:
        out.append(int(t))
        if int(t) in stops:
            return out, "stop"
    return out, "length"


def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """Keyword arguments that hand a KV cache to a Hugging Face model's ``forward``.

    transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name is deprecated and
    removed in 5.40); earlier 5.x releases only know the old one. The signature tells which.
    """
    import inspect

    params = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    return {name: cache, "use_cache": True}


def returned_cache(output: Any) -> Any:
    """The KV cache a forward returned, under its new (``cache``) or old name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
