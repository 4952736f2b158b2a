"""Hard-token labels: a frozen reference model, teacher-forced, marks where its argmax is wrong.

Nothing in transformers or datasets does this job, and the reference script (METHOD B.3/H.14)
has the problems we fix here: a hard-coded ``<think>`` id, one sample per forward, per-token
Python lists in RAM and no resume. This module (1) renders each record with the tokenizer's chat
template and finds the supervised span by comparing token prefixes, never by known ids; (2) runs
the model on length-sorted, right-padded batches and takes the argmax/entropy from the final
hidden states in chunks, so no (B, T, V) logits tensor is ever materialised; (3) writes
fixed-size Arrow shards atomically so a killed run resumes where it stopped and gives the same
output; (4) turns labelled rows into training features (METHOD B.4).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tah.data.records import Record
from tah.errors import CheckpointError, ConfigError, DataError
from tah.io import atomic_dir, write_json

log = logging.getLogger(__name__)

LABELS_FORMAT = "tah-labels/1"
METADATA_FILE = "tah_labels.json"
SHARDS_DIR = "shards"
SHARD_STATS_FILE = "shard_stats.json"
STRATEGIES = ("mismatch", "all")
LENGTH_ACTIONS = ("truncate", "drop")
# Logits computed at once by next_token_stats, per device type. On CPU 2**22 fp32 values
# (16 MiB) measured fastest: bigger temporaries are mmap'ed and page-faulted on every chunk.
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}

# ============================================================== tokenizer / model plumbing


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


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(name: str, device: str) -> Any:
    """``auto`` is fp32 on CPU (bf16 matmuls are slow and lossy there) and bf16 on GPUs."""
    import torch

    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name == "auto":
        return torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    if name not in table:
        raise ConfigError(f"dtype must be one of {['auto', *table]}, got {name!r}")
    return table[name]


def _check_model_source(name_or_path: str, *, needs_config: bool = True) -> None:
    """Local paths must exist (and hold a config); anything else is passed on as a hub id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if needs_config and not (path / "config.json").is_file():
            raise CheckpointError(f"{path} has no config.json; expected a Hugging Face model dir")
        return
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise CheckpointError(f"no such directory: {name_or_path!r}")


def load_model_config(name_or_path: str) -> Any:
    """Read only the config (cheap), so vocabulary checks run before any weights load."""
    from transformers import AutoConfig

    _check_model_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the model config of {name_or_path!r}: {exc}") from None


def load_causal_lm(name_or_path: str, *, dtype: str = "auto", device: str = "auto") -> Any:
    """Load a Hugging Face causal LM (local directory or hub id) in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    _check_model_source(name_or_path)
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

    _check_model_source(name_or_path, needs_config=False)
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


# ============================================================== encoding and the supervised span


@dataclass
class EncodedSample:
    """A record rendered by the chat template; positions >= ``span_start`` are supervised."""

    data_id: int
    record_id: str
    input_ids: np.ndarray
    span_start: int
    truncated: bool = False


def _common_prefix(a: Sequence[int], b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != b[:n])
    return int(diff[0]) if diff.size else n


def special_token_id(tokenizer: Any, token: str | None) -> int | None:
    """The id of ``token`` if the tokenizer knows it as one token, else None."""
    if not token:
        return None
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        return None
    return int(tid)


def encode_records(
    tokenizer: Any,
    records: Sequence[Record],
    *,
    think_token: str | None = "<think>",
    chunk: int = 256,
) -> list[EncodedSample]:
    """Render records as [user: question, assistant: solution] and locate the supervised span.

    The assistant turn starts where the full rendering stops agreeing (token by token) with the
    rendering of the user turn alone; content starts where it stops agreeing with the user turn
    plus the generation prompt. The span is from the first ``think_token`` inside the assistant
    turn when there is one (METHOD B.3), otherwise from the first assistant-content token.
    Token prefixes (not string offsets) make this robust to merges at the boundary.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
            "pass one with --chat-template FILE"
        )
    think_id = special_token_id(tokenizer, think_token)
    out: list[EncodedSample] = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        users = [[{"role": "user", "content": r.question}] for r in part]
        fulls = [u + [{"role": "assistant", "content": r.solution}] for u, r in zip(users, part)]
        try:
            texts = {
                "full": tokenizer.apply_chat_template(fulls, tokenize=False),
                "user": tokenizer.apply_chat_template(users, tokenize=False),
                "prompt": tokenizer.apply_chat_template(
                    users, tokenize=False, add_generation_prompt=True
                ),
            }
        except Exception as exc:  # jinja raises its own types (TemplateError, TypeError, ...)
            raise DataError(
                f"the chat template of {getattr(tokenizer, 'name_or_path', '?')!r} failed on "
                f"records {part[0].origin or part[0].index}..: {type(exc).__name__}: {exc}; "
                "fix the template or pass --chat-template"
            ) from None
        ids = {k: tokenizer(v, add_special_tokens=False)["input_ids"] for k, v in texts.items()}
        for i, rec in enumerate(part):
            full = np.asarray(ids["full"][i], dtype=np.int32)
            turn = _common_prefix(ids["user"][i], full)
            content = _common_prefix(ids["prompt"][i], full)
            span = content
            if think_id is not None:
                hits = np.flatnonzero(full[turn:] == think_id)
                if hits.size:
                    span = turn + int(hits[0])
            out.append(EncodedSample(rec.index, rec.record_id, full, span))
    return out


@dataclass
class LengthReport:
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_span: int = 0


def apply_length_policy(
    samples: Sequence[EncodedSample], max_length: int | None, truncate: bool
) -> tuple[list[EncodedSample], LengthReport]:
    """Truncate or drop over-long samples; drop samples left without a supervised token."""
    kept: list[EncodedSample] = []
    rep = LengthReport()
    for s in samples:
        if max_length is not None and len(s.input_ids) > max_length:
            if not truncate:
                rep.dropped_too_long += 1
                continue
            s = EncodedSample(s.data_id, s.record_id, s.input_ids[:max_length], s.span_start, True)
            rep.truncated += 1
        if s.span_start >= len(s.input_ids):
            rep.dropped_no_span += 1
            continue
        kept.append(s)
    rep.kept = len(kept)
    return kept, rep


# ============================================================== reference-model statistics

_HEAD_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _final_hidden(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    out = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _head_path_ok(model: Any) -> bool:
    """Check once per model that lm_head(decoder(x)) reproduces model(x).logits.

    Models that post-process logits (soft-capping, scaling) fail the check and fall back to
    full logits, so the chunked fast path can never silently change results.
    """
    import torch

    key = model
    if key not in _HEAD_OK:
        device = next(model.parameters()).device
        rows = model.get_output_embeddings().weight.shape[0]
        probe = (torch.arange(1, 9, device=device) * 7919 % rows).unsqueeze(0)
        mask = torch.ones_like(probe)
        try:
            with torch.inference_mode():
                ref = model(input_ids=probe, attention_mask=mask, use_cache=False).logits.float()
                ours = model.get_output_embeddings()(_final_hidden(model, probe, mask)).float()
            tol = 1e-3 * max(1.0, float(ref.abs().max()))
            _HEAD_OK[key] = ours.shape == ref.shape and bool((ours - ref).abs().max() <= tol)
        except Exception as exc:  # any model-specific failure means: use the plain path
            log.debug("chunked head path unavailable: %s", exc)
            _HEAD_OK[key] = False
        if not _HEAD_OK[key]:
            log.info(
                "%s: computing full logits (chunked head path not exact)", type(model).__name__
            )
    return _HEAD_OK[key]


def next_token_stats(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    *,
    pred: bool = True,
    entropy: bool = False,
    nll: bool = False,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Per-position argmax, softmax entropy and NLL of the next token, each (B, T), fp32 maths.

    Position i holds statistics of the distribution that predicts token i + 1. ``nll`` is 0 at
    positions without a valid next token; padding positions are 0 everywhere. Logits are
    computed ``chunk_size`` valid positions at a time (default: as many as fit in
    ``CHUNK_ELEMENTS`` logits for the device), so memory stays O(chunk * V) whatever the batch.
    """
    import torch

    valid = attention_mask.bool()
    next_valid = torch.zeros_like(valid)
    next_valid[:, :-1] = valid[:, :-1] & valid[:, 1:]
    targets = torch.zeros_like(input_ids)
    targets[:, :-1] = input_ids[:, 1:]
    with torch.inference_mode():
        if _head_path_ok(model):
            rows = _final_hidden(model, input_ids, attention_mask)[valid]
            head = model.get_output_embeddings()
        else:
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            rows, head = out.logits[valid], None
        flat_targets = targets[valid]
        n = rows.shape[0]
        res: dict[str, Any] = {}
        if pred:
            res["pred"] = torch.empty(n, dtype=torch.long, device=rows.device)
        if entropy:
            res["entropy"] = torch.empty(n, dtype=torch.float32, device=rows.device)
        if nll:
            res["nll"] = torch.empty(n, dtype=torch.float32, device=rows.device)
        if chunk_size is None:
            budget = CHUNK_ELEMENTS.get(rows.device.type, 1 << 24)
            chunk_size = max(1, budget // model.get_output_embeddings().weight.shape[0])
        for s in range(0, n, chunk_size):
            part = rows[s : s + chunk_size]
            logits = (head(part) if head is not None else part).float()
            if pred:
                res["pred"][s : s + chunk_size] = logits.argmax(-1)
            if entropy or nll:
                lse = torch.logsumexp(logits, dim=-1)
            if entropy:
                weighted = torch.softmax(logits, dim=-1).mul_(logits).sum(-1)
                res["entropy"][s : s + chunk_size] = lse - weighted
            if nll:
                tgt = flat_targets[s : s + chunk_size].unsqueeze(-1)
                res["nll"][s : s + chunk_size] = lse - logits.gather(-1, tgt).squeeze(-1)
        out_full: dict[str, Any] = {}
        for k, v in res.items():
            full = torch.zeros(input_ids.shape, dtype=v.dtype, device=v.device)
            full[valid] = v
            if k == "nll":
                full = full * next_valid
            out_full[k] = full
    return out_full


# ============================================================== the labelling run


@dataclass
class LabelSettings:
    """Knobs of a labelling run. Only ``batch_size``/``max_batch_tokens`` may change on resume."""

    max_length: int | None = None
    truncate: bool = False
    batch_size: int = 8
    max_batch_tokens: int | None = None
    shard_size: int = 512
    entropy: bool = False
    think_token: str | None = "<think>"

    def validate(self) -> None:
        for name in ("batch_size", "shard_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("max_length", "max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 2):
                raise ConfigError(f"{name} must be an integer >= 2 or unset, got {value!r}")


@dataclass
class LabelReport:
    """What a labelling run produced (over all shards, including ones reused on resume)."""

    output_dir: str
    records: int = 0
    skipped_records: int = 0
    samples: int = 0
    tokens: int = 0
    hard_tokens: int = 0
    supervised_tokens: int = 0
    supervised_hard_tokens: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_span: int = 0
    shards_total: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    complete: bool = False

    @property
    def hard_ratio(self) -> float:
        return self.hard_tokens / self.tokens if self.tokens else 0.0

    @property
    def supervised_hard_ratio(self) -> float:
        return (
            self.supervised_hard_tokens / self.supervised_tokens if self.supervised_tokens else 0.0
        )


_STAT_KEYS = ("samples", "tokens", "hard_tokens", "supervised_tokens", "supervised_hard_tokens")


def _model_identity(model: Any, model_name: str | None) -> dict[str, Any]:
    cfg = model.config
    return {
        "name_or_path": model_name or str(getattr(cfg, "_name_or_path", "")),
        "model_type": getattr(cfg, "model_type", None),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "embedding_rows": int(model.get_input_embeddings().weight.shape[0]),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


def _plan_fingerprint(head: dict[str, Any], samples: Sequence[EncodedSample]) -> str:
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode("utf-8"))
    for s in samples:
        h.update(np.asarray([s.data_id, s.span_start, len(s.input_ids)], np.int64).tobytes())
        h.update(s.record_id.encode("utf-8") + b"\0")
        h.update(np.ascontiguousarray(s.input_ids, dtype=np.int32).tobytes())
    return h.hexdigest()


def _batches(shard: Sequence[EncodedSample], settings: LabelSettings) -> list[list[EncodedSample]]:
    """Consecutive groups of a length-sorted shard within the sample and token budgets."""
    out: list[list[EncodedSample]] = []
    cur: list[EncodedSample] = []
    for s in shard:
        longest = max([len(s.input_ids)] + [len(c.input_ids) for c in cur[:1]])
        too_many = len(cur) >= settings.batch_size
        too_big = (
            settings.max_batch_tokens is not None
            and (len(cur) + 1) * longest > settings.max_batch_tokens
        )
        if cur and (too_many or too_big):
            out.append(cur)
            cur = []
        cur.append(s)
    if cur:
        out.append(cur)
    return out


def _label_shard(
    model: Any, shard: Sequence[EncodedSample], settings: LabelSettings, advance: Callable
) -> tuple[dict[str, list], dict[str, int]]:
    import torch

    device = next(model.parameters()).device
    cols: dict[str, list] = {
        k: [] for k in ("data_id", "record_id", "input_ids", "mask", "mismatch")
    }
    if settings.entropy:
        cols["entropy"] = []
    stats = dict.fromkeys(_STAT_KEYS, 0)
    for batch in _batches(shard, settings):
        width = max(len(s.input_ids) for s in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for b, s in enumerate(batch):
            ids[b, : len(s.input_ids)] = torch.from_numpy(s.input_ids.astype(np.int64))
            attn[b, : len(s.input_ids)] = 1
        res = next_token_stats(
            model, ids.to(device), attn.to(device), pred=True, entropy=settings.entropy
        )
        preds = res["pred"].cpu().numpy()
        ents = res["entropy"].cpu().numpy() if settings.entropy else None
        for b, s in enumerate(batch):
            n = len(s.input_ids)
            mismatch = np.zeros(n, dtype=np.int8)
            mismatch[:-1] = preds[b, : n - 1] != s.input_ids[1:]
            mask = np.zeros(n, dtype=np.int8)
            mask[s.span_start :] = 1
            cols["data_id"].append(s.data_id)
            cols["record_id"].append(s.record_id)
            cols["input_ids"].append(s.input_ids)
            cols["mask"].append(mask)
            cols["mismatch"].append(mismatch)
            if ents is not None:
                cols["entropy"].append(ents[b, :n].astype(np.float32))
            stats["samples"] += 1
            stats["tokens"] += n
            stats["hard_tokens"] += int(mismatch.sum())
            stats["supervised_tokens"] += int(mask.sum())
            stats["supervised_hard_tokens"] += int((mismatch & mask).sum())
        advance(len(batch))
    return cols, stats


def _features(entropy: bool) -> Any:
    from datasets import Features, List, Value

    spec = {
        "data_id": Value("int64"),
        "record_id": Value("string"),
        "input_ids": List(Value("int32")),
        "mask": List(Value("int8")),
        "mismatch": List(Value("int8")),
    }
    if entropy:
        spec["entropy"] = List(Value("float32"))
    return Features(spec)


def _write_shard(target: Path, cols: dict[str, list], stats: dict[str, int], entropy: bool) -> None:
    import datasets
    from datasets import Dataset

    data = {
        k: [np.asarray(v).tolist() for v in vs] if k not in ("data_id", "record_id") else vs
        for k, vs in cols.items()
    }
    ds = Dataset.from_dict(data, features=_features(entropy))
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with atomic_dir(target) as tmp:
            ds.save_to_disk(str(tmp))
            write_json(tmp / SHARD_STATS_FILE, stats)
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _prepare_output(out: Path, meta: dict[str, Any], overwrite: bool) -> None:
    """Start or resume: same plan → keep finished shards; another plan → refuse or replace."""
    meta_path = out / METADATA_FILE
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old.get("plan", {}).get("fingerprint") != meta["plan"]["fingerprint"]:
            if not overwrite:
                raise DataError(
                    f"{out} holds labels from a different run (other data, tokenizer, model or "
                    "settings); pass --overwrite to replace them or choose another --output"
                )
            shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
            write_json(meta_path, meta)
    elif out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists, is not empty and is not a tah labels directory")
    else:
        write_json(meta_path, meta)
    # temporary shard dirs left by a killed run (atomic_dir names them .shard-*.tmp-*)
    for stale in (out / SHARDS_DIR).glob(".shard-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def label_records(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    output_dir: str | os.PathLike,
    settings: LabelSettings | None = None,
    *,
    model_name: str | None = None,
    source: str | None = None,
    skipped_records: int = 0,
    overwrite: bool = False,
    max_shards: int | None = None,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
) -> LabelReport:
    """Label ``records`` with ``model`` into ``output_dir`` (resumable; see module docstring).

    Samples are sorted by length (longest first, so memory problems show at once), cut into
    shards of ``settings.shard_size`` and labelled batch by batch. A shard directory that
    exists is complete (atomic write) and is skipped, so rerunning the same command after a
    kill finishes the job with identical output. ``max_shards`` stops after writing that many
    new shards (the report then has ``complete=False``); ``on_shard(k)`` runs after shard k.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    settings = settings or LabelSettings()
    settings.validate()
    check_vocab(tokenizer, model.get_input_embeddings().weight.shape[0], model_name or "model")
    out = Path(output_dir)
    samples, lengths = apply_length_policy(
        encode_records(tokenizer, records, think_token=settings.think_token),
        settings.max_length,
        settings.truncate,
    )
    if not samples:
        raise DataError(
            f"no samples left to label out of {len(records)} records: {lengths.dropped_too_long} "
            f"longer than max_length={settings.max_length} (use --truncate), "
            f"{lengths.dropped_no_span} without supervised tokens"
        )
    samples.sort(key=lambda s: (-len(s.input_ids), s.data_id))
    shards = [
        samples[i : i + settings.shard_size] for i in range(0, len(samples), settings.shard_size)
    ]
    fixed = {
        k: v for k, v in asdict(settings).items() if k not in ("batch_size", "max_batch_tokens")
    }
    tok_fp, ident = tokenizer_fingerprint(tokenizer), _model_identity(model, model_name)
    head = {
        "format": LABELS_FORMAT,
        "settings": fixed,
        "tokenizer": tok_fp["vocab_sha256"],
        "model": ident,
    }
    meta: dict[str, Any] = {
        "format": LABELS_FORMAT,
        "complete": False,
        "source": source,
        "tokenizer": tok_fp,
        "reference_model": ident,
        "settings": asdict(settings),
        "plan": {
            "fingerprint": _plan_fingerprint(head, samples),
            "records": len(records),
            "skipped_records": skipped_records,
            "shards": len(shards),
            **asdict(lengths),
        },
    }
    _prepare_output(out, meta, overwrite)
    report = LabelReport(
        output_dir=str(out),
        records=len(records),
        skipped_records=skipped_records,
        truncated=lengths.truncated,
        dropped_too_long=lengths.dropped_too_long,
        dropped_no_span=lengths.dropped_no_span,
        shards_total=len(shards),
    )
    columns = (TextColumn("labelling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("label", total=len(samples))
        for k, shard in enumerate(shards):
            target = out / SHARDS_DIR / f"shard-{k:05d}"
            if target.is_dir():
                report.shards_reused += 1
                bar.advance(task, len(shard))
                continue
            if max_shards is not None and report.shards_written >= max_shards:
                break
            cols, stats = _label_shard(model, shard, settings, lambda n: bar.advance(task, n))
            _write_shard(target, cols, stats, settings.entropy)
            report.shards_written += 1
            if on_shard is not None:
                on_shard(k)
    done = [out / SHARDS_DIR / f"shard-{k:05d}" for k in range(len(shards))]
    report.complete = all(d.is_dir() for d in done)
    for d in (d for d in done if d.is_dir()):  # partial runs report what exists so far
        stats = json.loads((d / SHARD_STATS_FILE).read_text(encoding="utf-8"))
        for key in _STAT_KEYS:
            setattr(report, key, getattr(report, key) + int(stats[key]))
    if report.complete:
        meta["complete"] = True
        meta["stats"] = {
            **{key: getattr(report, key) for key in _STAT_KEYS},
            "hard_ratio": report.hard_ratio,
            "supervised_hard_ratio": report.supervised_hard_ratio,
        }
        write_json(out / METADATA_FILE, meta)
    return report


def report_table(report: LabelReport) -> Any:
    """A rich table summarising a labelling run."""
    from rich.table import Table

    table = Table(title=f"tah label → {report.output_dir}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("records read", f"{report.records}"),
        ("malformed records skipped", f"{report.skipped_records}"),
        ("samples labelled", f"{report.samples}"),
        ("truncated to max length", f"{report.truncated}"),
        ("dropped: too long", f"{report.dropped_too_long}"),
        ("dropped: no supervised token", f"{report.dropped_no_span}"),
        ("tokens", f"{report.tokens}"),
        ("hard-token ratio (all tokens)", f"{report.hard_ratio:.2%}"),
        ("supervised tokens", f"{report.supervised_tokens}"),
        ("hard-token ratio (supervised)", f"{report.supervised_hard_ratio:.2%}"),
        (
            "shards written / reused / total",
            f"{report.shards_written} / {report.shards_reused} / {report.shards_total}",
        ),
        ("complete", "yes" if report.complete else "no (rerun the same command to resume)"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


# ============================================================== labelled rows → training features


def load_labels(path: str | os.PathLike, *, tokenizer: Any = None) -> tuple[Any, dict[str, Any]]:
    """Open a finished ``tah label`` directory as one memory-mapped ``datasets.Dataset``.

    With ``tokenizer`` the labels' tokenizer fingerprint must match (:class:`DataError`
    otherwise). Incomplete runs and empty results are refused with a message saying what to do.
    """
    import datasets

    out = Path(path)
    meta_path = out / METADATA_FILE
    if not meta_path.is_file():
        raise DataError(
            f"{out} is not a tah labels directory (no {METADATA_FILE}); run `tah label`"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != LABELS_FORMAT:
        raise DataError(f"{meta_path}: unknown labels format {meta.get('format')!r}")
    n_shards = int(meta["plan"]["shards"])
    dirs = [out / SHARDS_DIR / f"shard-{k:05d}" for k in range(n_shards)]
    missing = sum(not d.is_dir() for d in dirs)
    if not meta.get("complete") or missing:
        raise DataError(
            f"labelling in {out} is incomplete ({n_shards - missing} of {n_shards} shards); rerun "
            "the same `tah label` command to resume"
        )
    if tokenizer is not None:
        check_label_tokenizer(meta, tokenizer)
    parts = [datasets.load_from_disk(str(d)) for d in dirs]
    data = datasets.concatenate_datasets(parts) if parts else None
    if data is None or len(data) == 0:
        raise DataError(f"{out} holds no labelled samples")
    return data, meta


def _check_strategy(max_iter: int, strategy: str, query_iter: int) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"iteration-label strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not 1 <= query_iter <= max_iter:
        raise ConfigError(f"query_iter must be in [1, max_iter={max_iter}], got {query_iter!r}")


def build_features(
    row: Mapping[str, Any],
    *,
    max_iter: int = 2,
    strategy: str = "mismatch",
    seed: int = 0,
    query_iter: int = 1,
    max_length: int | None = None,
) -> dict[str, list[int]]:
    """Turn one labelled row into ``input_ids``, ``attention_mask``, ``labels``, ``iter_labels``.

    ``labels`` are the ids with -100 where mask == 0 (unshifted; the loss shifts).
    ``iter_labels`` (METHOD B.4) is the oracle depth per position: ``query_iter`` on prompt
    positions, 1 on easy supervised tokens; hard supervised tokens (mask & mismatch) get 2 when
    ``max_iter`` is 2 and a uniform integer in [2, max_iter] for deeper models, drawn from a
    generator seeded by (seed, data_id) so a row always gets the same depths. A mismatch value
    v > 1 is read as "v extra iterations" (depth v + 1). Strategy ``all`` gives every
    supervised token depth ``max_iter`` (the AlwaysThink baseline). ``max_iter`` 1 gives all 1.
    """
    _check_strategy(max_iter, strategy, query_iter)
    ids = np.asarray(row["input_ids"], dtype=np.int64)[:max_length]
    mask = np.asarray(row["mask"], dtype=np.int64)[:max_length]
    mismatch = np.asarray(row["mismatch"], dtype=np.int64)[:max_length]
    if not (len(ids) == len(mask) == len(mismatch)):
        raise DataError(f"row {row.get('data_id')}: input_ids, mask and mismatch lengths differ")
    labels = np.where(mask == 1, ids, -100)
    depth = np.where(mask == 1, 1, query_iter)
    if max_iter > 1:
        supervised = mask == 1
        if strategy == "all":
            depth[supervised] = max_iter
        else:
            hard = supervised & (mismatch >= 1)
            if int(mismatch.max(initial=0)) > 1:
                extra = mismatch[hard] + 1
                if int(extra.max()) > max_iter:
                    raise DataError(
                        f"row {row.get('data_id')}: mismatch holds {int(extra.max()) - 1} extra "
                        f"iterations but max_iter is {max_iter}"
                    )
                depth[hard] = np.where(mismatch[hard] > 1, extra, 2)
            elif max_iter == 2:
                depth[hard] = 2
            else:
                rng = np.random.default_rng([int(seed), int(row.get("data_id", 0))])
                depth[hard] = rng.integers(2, max_iter + 1, size=int(hard.sum()))
    return {
        "input_ids": ids.tolist(),
        "attention_mask": [1] * len(ids),
        "labels": labels.tolist(),
        "iter_labels": depth.tolist(),
    }


def load_training_dataset(
    path: str | os.PathLike,
    *,
    tokenizer: Any = None,
    max_iter: int = 2,
    strategy: str = "mismatch",
    max_length: int | None = None,
    length_action: str = "truncate",
    seed: int = 0,
    query_iter: int = 1,
    require_hard: bool = True,
) -> Any:
    """Labelled rows as a training ``datasets.Dataset`` (features built lazily per access).

    Rows longer than ``max_length`` are truncated (``length_action="truncate"``) or dropped
    (``"drop"``). With ``require_hard`` a row is kept only if, after truncation, it has a
    supervised hard token (strategy ``mismatch``) or any supervised token (``all``), as in
    METHOD B.4. Items are dicts from :func:`build_features`; nothing is written to disk.
    """
    _check_strategy(max_iter, strategy, query_iter)
    if length_action not in LENGTH_ACTIONS:
        raise ConfigError(f"length_action must be one of {LENGTH_ACTIONS}, got {length_action!r}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ConfigError(f"max_length must be an integer >= 2 or unset, got {max_length!r}")
    data, _ = load_labels(path, tokenizer=tokenizer)
    keep: list[int] = []
    dropped_long = no_target = 0
    table = data.select_columns(["mask", "mismatch"]).with_format("numpy")
    for start in range(0, len(data), 1024):
        chunk = table[start : start + 1024]
        for j, (mask, mismatch) in enumerate(zip(chunk["mask"], chunk["mismatch"])):
            if max_length is not None and len(mask) > max_length:
                if length_action == "drop":
                    dropped_long += 1
                    continue
                mask, mismatch = mask[:max_length], mismatch[:max_length]
            target = (
                mask.astype(bool) if strategy == "all" else (mask & (mismatch >= 1)).astype(bool)
            )
            if require_hard and not target.any():
                no_target += 1
                continue
            keep.append(start + j)
    log.info(
        "training rows: %d kept of %d (%d dropped as too long, %d without a target token)",
        len(keep),
        len(data),
        dropped_long,
        no_target,
    )
    if not keep:
        raise DataError(f"{path}: no training rows left after filtering (max_length={max_length})")
    options = {
        "max_iter": max_iter,
        "strategy": strategy,
        "seed": seed,
        "query_iter": query_iter,
        "max_length": max_length,
    }

    def transform(batch: dict[str, list]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        feats = [build_features(r, **options) for r in rows]
        return {
            k: [f[k] for f in feats]
            for k in ("input_ids", "attention_mask", "labels", "iter_labels")
        }

    selected = data.select(keep, keep_in_memory=True)
    return selected.with_transform(transform)
