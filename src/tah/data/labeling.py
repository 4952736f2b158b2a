"""Hard-token labels: a frozen reference model, teacher-forced, marks where its argmax is wrong.

Nothing in transformers or datasets does this job, and the reference script (docs/method.md §8)
has the problems we fix here: a hard-coded ``<think>`` id, one sample per forward, per-token
Python lists in RAM and no resume. The pieces: :mod:`tah.data.encoding` renders each record with
the tokenizer's chat template and finds the supervised span by comparing token prefixes, never
by known ids; this module runs the model on length-sorted, right-padded batches and takes the
argmax/entropy from the final hidden states in chunks, so no (B, T, V) logits tensor is ever
materialised, and writes fixed-size Arrow shards atomically (:mod:`tah.data.label_shards`), so
a killed run resumes where it stopped and gives the same output; :mod:`tah.data.label_features`
turns labelled rows into training features (docs/method.md §8); :mod:`tah.data.reference` loads and
checks the reference model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tah.data.encoding import EncodedSample, apply_length_policy, encode_records
from tah.data.label_shards import (
    LABELS_FORMAT,
    METADATA_FILE,
    SHARD_STATS_FILE,
    SHARDS_DIR,
    prepare_output,
    write_shard,
)
from tah.data.records import Record
from tah.data.reference import check_vocab, tokenizer_fingerprint
from tah.errors import ConfigError, DataError
from tah.io import write_json

log = logging.getLogger(__name__)

STRATEGIES = ("mismatch", "all")
# Logits computed at once by next_token_stats, per device type. On CPU 2**22 fp32 values
# (16 MiB) measured fastest: bigger temporaries are mmap'ed and page-faulted on every chunk.
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}

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


def model_context(model: Any) -> int | None:
    """The longest sequence ``model`` takes (``max_position_embeddings``), or None."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value >= 2 else None


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
    samples, lengths = _samples_to_label(model, tokenizer, records, settings)
    shards = [
        samples[i : i + settings.shard_size] for i in range(0, len(samples), settings.shard_size)
    ]
    plan = {"records": len(records), "skipped_records": skipped_records, "shards": len(shards)}
    meta = _metadata(model, tokenizer, settings, samples, lengths, model_name, source, plan)
    prepare_output(out, meta, overwrite)
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
            write_shard(target, cols, stats, settings.entropy)
            report.shards_written += 1
            if on_shard is not None:
                on_shard(k)
    _sum_finished_shards(out, len(shards), report, meta)
    return report


def _samples_to_label(
    model: Any, tokenizer: Any, records: Sequence[Record], settings: LabelSettings
) -> tuple[list, Any]:
    """Encoded samples under the length policy, longest first; an error when none is left."""
    # Without max_length, the model's own context bounds a sample: a longer one cannot be
    # labelled correctly and would allocate activations for its full length.
    max_length = settings.max_length or model_context(model)
    if settings.max_length is None and max_length is not None:
        log.info("max_length: the model's context of %d tokens", max_length)
    samples, lengths = apply_length_policy(
        encode_records(tokenizer, records, think_token=settings.think_token),
        max_length,
        settings.truncate,
    )
    if lengths.dropped_too_long:
        log.warning(
            "%d samples longer than max_length=%s tokens skipped (pass --truncate to keep "
            "their first %s tokens)",
            lengths.dropped_too_long,
            max_length,
            max_length,
        )
    if not samples:
        raise DataError(
            f"no samples left to label out of {len(records)} records: {lengths.dropped_too_long} "
            f"longer than max_length={max_length} (use --truncate), "
            f"{lengths.dropped_no_span} without supervised tokens"
        )
    samples.sort(key=lambda s: (-len(s.input_ids), s.data_id))
    return samples, lengths


def _metadata(
    model: Any,
    tokenizer: Any,
    settings: LabelSettings,
    samples: list,
    lengths: Any,
    model_name: str | None,
    source: str | None,
    plan: dict[str, int],
) -> dict[str, Any]:
    """tah_labels.json before any shard: what a rerun must match to resume (the plan)."""
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
            **plan,
            **asdict(lengths),
        },
    }
    return meta


def _sum_finished_shards(out: Path, n_shards: int, report: LabelReport, meta: dict) -> None:
    """Add up the finished shards' counts; with every shard there, mark the labels complete."""
    done = [out / SHARDS_DIR / f"shard-{k:05d}" for k in range(n_shards)]
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
