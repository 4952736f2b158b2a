"""Layer pruning for the parameter-matched TaH model (docs/method.md §9), measured per token.

Neither transformers nor peft removes decoder layers from a checkpoint, and the reference
script averages per-batch mean losses (long and short batches weigh the same), scores the prompt
too, and uses only 16 samples (docs/method.md §9). Here each candidate layer is taken out by
rebuilding the ``nn.ModuleList`` (restored afterwards), the calibration loss is the sum of token
NLLs divided by the number of scored tokens, and the scored tokens can be limited to the
assistant span. The pruned model is a plain Hugging Face checkpoint: config layer counts and
per-layer lists trimmed, attention ``layer_idx`` renumbered so KV caches index correctly.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tah.errors import ConfigError, DataError, UnsupportedModelError
from tah.io import atomic_dir, atomic_file, write_json

SCORE_MODES = ("assistant", "all")
PER_LAYER_CONFIG_KEYS = ("layer_types", "mlp_layer_types")
REPORT_JSON = "prune_report.json"
REPORT_MD = "prune_report.md"


# ============================================================== calibration data


@dataclass
class Calibration:
    """Right-padded batches; ``targets[b, t]`` marks token t as scored (predicted from t - 1)."""

    batches: list[tuple[Any, Any, Any]]
    samples: int
    tokens: int


def build_calibration(
    sequences: Sequence[tuple[np.ndarray, np.ndarray]], *, batch_size: int = 4
) -> Calibration:
    """Batch (input_ids, target_mask) pairs, sorted by length so padding is small."""
    import torch

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    seqs = sorted(sequences, key=lambda s: -len(s[0]))
    batches, tokens = [], 0
    for start in range(0, len(seqs), batch_size):
        part = seqs[start : start + batch_size]
        width = max(len(ids) for ids, _ in part)
        ids = torch.zeros((len(part), width), dtype=torch.long)
        attn = torch.zeros_like(ids)
        tgt = torch.zeros((len(part), width), dtype=torch.bool)
        for b, (seq, target) in enumerate(part):
            n = len(seq)
            ids[b, :n] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
            attn[b, :n] = 1
            tgt[b, 1:n] = torch.as_tensor(np.asarray(target[1:n], dtype=bool))
        tokens += int(tgt.sum())
        batches.append((ids, attn, tgt))
    if tokens == 0:
        raise DataError("the calibration set has no scored tokens; use more or longer samples")
    return Calibration(batches=batches, samples=len(seqs), tokens=tokens)


def load_calibration(
    source: str | os.PathLike,
    tokenizer: Any,
    *,
    max_samples: int = 64,
    max_length: int = 4096,
    score: str = "assistant",
    batch_size: int = 4,
    split: str = "train",
    on_error: str = "raise",
    think_token: str | None = "<think>",
) -> Calibration:
    """Calibration text from records (chat-templated) or from a ``tah label`` directory.

    ``score="assistant"`` scores only the supervised span (what TaH is trained on);
    ``"all"`` scores every token after the first, as the reference script did.
    """
    from tah.data.encoding import encode_records
    from tah.data.label_features import load_labels
    from tah.data.labeling import METADATA_FILE
    from tah.data.records import load_records

    if score not in SCORE_MODES:
        raise ConfigError(f"score must be one of {SCORE_MODES}, got {score!r}")
    if max_samples < 1 or max_length < 2:
        raise ConfigError(
            f"need max_samples >= 1 and max_length >= 2, got {max_samples}, {max_length}"
        )
    seqs: list[tuple[np.ndarray, np.ndarray]] = []
    if (Path(source) / METADATA_FILE).is_file():
        data, _ = load_labels(source, tokenizer=tokenizer)
        order = np.argsort(np.asarray(data["data_id"]), kind="stable")[:max_samples]
        for row in data.select(order.tolist(), keep_in_memory=True):
            seqs.append((np.asarray(row["input_ids"]), np.asarray(row["mask"])))
    else:
        records = load_records(source, split=split, on_error=on_error, limit=max_samples)
        for s in encode_records(tokenizer, records.records, think_token=think_token):
            mask = np.zeros(len(s.input_ids), dtype=bool)
            mask[s.span_start :] = True
            seqs.append((s.input_ids, mask))
    seqs = [
        (
            ids[:max_length],
            np.ones(len(ids[:max_length]), bool) if score == "all" else m[:max_length],
        )
        for ids, m in seqs
    ]
    return build_calibration(seqs, batch_size=batch_size)


def corpus_loss(model: Any, calib: Calibration) -> tuple[float, int]:
    """Token-weighted mean NLL over the scored tokens, and their number."""
    from tah.data.labeling import next_token_stats

    device = next(model.parameters()).device
    total, count = 0.0, 0
    for ids, attn, tgt in calib.batches:
        res = next_token_stats(model, ids.to(device), attn.to(device), pred=False, nll=True)
        scored = tgt[:, 1:].to(device)  # position t - 1 predicts token t
        total += float(res["nll"][:, :-1][scored].double().sum())
        count += int(scored.sum())
    return total / count, count


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


# ============================================================== layer surgery


def _text_config(model: Any) -> Any:
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def find_layers(model: Any) -> tuple[Any, str]:
    """(owner module, attribute name) of the decoder's layer ``ModuleList``."""
    from torch import nn

    n = getattr(_text_config(model), "num_hidden_layers", None)
    if getattr(model.config, "is_heterogeneous", False):
        raise UnsupportedModelError("heterogeneous (per-layer config) models cannot be pruned")
    decoder = model.get_decoder()
    if isinstance(getattr(decoder, "layers", None), nn.ModuleList) and len(decoder.layers) == n:
        return decoder, "layers"
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList)
        and len(mod) == n
        and name.split(".")[-1] in ("layers", "h")
    ]
    if len(found) != 1:
        raise UnsupportedModelError(
            f"cannot find the decoder layer list of {type(model).__name__} "
            f"(num_hidden_layers={n}); found {[name for name, _ in found]}"
        )
    owner_name, _, attr = found[0][0].rpartition(".")
    return model.get_submodule(owner_name) if owner_name else model, attr


def _set_layers(
    model: Any, owner: Any, attr: str, keep: Sequence[int], originals: Sequence[Any]
) -> None:
    from torch import nn

    setattr(owner, attr, nn.ModuleList([originals[i] for i in keep]))
    cfg = _text_config(model)
    for key in PER_LAYER_CONFIG_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, (list, tuple)) and len(value) == len(originals):
            setattr(cfg, key, [value[i] for i in keep])
    cfg.num_hidden_layers = len(keep)


def _renumber(layers: Sequence[Any]) -> list[tuple[Any, int]]:
    """Set every ``layer_idx`` to the layer's new position; return (module, old value) pairs."""
    old = []
    for new_idx, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                old.append((module, module.layer_idx))
                module.layer_idx = new_idx
    return old


@contextlib.contextmanager
def layers_removed(model: Any, drop: Sequence[int]) -> Iterator[None]:
    """Temporarily run ``model`` without the layers ``drop``; everything is restored after.

    Inside, the model is exactly what :func:`remove_layers` would make (so it also works with a
    KV cache); on exit the original ``ModuleList``, config values and ``layer_idx`` return.
    """
    owner, attr = find_layers(model)
    module_list = getattr(owner, attr)
    originals = list(module_list)
    cfg = _text_config(model)
    keys = ("num_hidden_layers", *PER_LAYER_CONFIG_KEYS)
    saved = {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}
    renumbered: list[tuple[Any, int]] = []
    try:
        keep = [i for i in range(len(originals)) if i not in set(drop)]
        _set_layers(model, owner, attr, keep, originals)
        renumbered = _renumber(getattr(owner, attr))
        yield
    finally:
        for module, idx in renumbered:
            module.layer_idx = idx
        setattr(owner, attr, module_list)
        for key, value in saved.items():
            setattr(cfg, key, value)


def remove_layers(model: Any, drop: Sequence[int]) -> None:
    """Delete layers ``drop`` for good: config trimmed and each ``layer_idx`` renumbered."""
    owner, attr = find_layers(model)
    originals = list(getattr(owner, attr))
    bad = [i for i in drop if not 0 <= i < len(originals)]
    if bad or len(set(drop)) >= len(originals):
        raise ConfigError(f"cannot remove layers {list(drop)} from a {len(originals)}-layer model")
    keep = [i for i in range(len(originals)) if i not in set(drop)]
    _set_layers(model, owner, attr, keep, originals)
    _renumber(getattr(owner, attr))


# ============================================================== scoring and the result


@dataclass
class LayerScore:
    layer: int
    loss: float
    ppl: float
    delta_ppl: float


@dataclass
class PruneReport:
    """Per-layer ΔPPL table, the chosen layers and the pruned model's perplexity."""

    num_layers: int
    calibration_samples: int
    calibration_tokens: int
    base_loss: float
    base_ppl: float
    scores: list[LayerScore] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    pruned_loss: float | None = None
    pruned_ppl: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [
            f"# Layer pruning: removed {self.removed} of {self.num_layers} layers",
            "",
            f"Calibration: {self.calibration_samples} samples, {self.calibration_tokens} scored "
            f"tokens (token-weighted NLL). Base PPL {self.base_ppl:.4f}; pruned PPL "
            f"{'n/a' if self.pruned_ppl is None else format(self.pruned_ppl, '.4f')}.",
            "",
            "| layer | loss | PPL without it | ΔPPL | removed |",
            "|---:|---:|---:|---:|:---:|",
        ]
        for s in self.scores:
            mark = "yes" if s.layer in self.removed else ""
            lines.append(
                f"| {s.layer} | {s.loss:.6f} | {s.ppl:.4f} | {s.delta_ppl:+.4f} | {mark} |"
            )
        return "\n".join(lines) + "\n"


def select_layers(scores: Sequence[LayerScore], n: int) -> list[int]:
    """The ``n`` layers with smallest ΔPPL (ties: smaller PPL, then index; non-finite last)."""
    order = sorted(
        scores,
        key=lambda s: (not math.isfinite(s.delta_ppl), s.delta_ppl, s.ppl, s.layer),
    )
    return sorted(s.layer for s in order[:n])


def prune_layers(
    model: Any, calib: Calibration, num_prune: int = 1, *, progress: bool = True
) -> PruneReport:
    """Score every layer by ΔPPL when removed alone, remove the ``num_prune`` best, re-measure.

    Selection is one-shot greedy like the reference (not iterative re-scoring); the report's
    ``pruned_ppl`` shows the joint effect of removing them together.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    owner, attr = find_layers(model)
    n_layers = len(getattr(owner, attr))
    if not isinstance(num_prune, int) or not 1 <= num_prune < n_layers:
        raise ConfigError(
            f"num_prune must be in [1, {n_layers - 1}] for this model, got {num_prune!r}"
        )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("scoring layers", total=n_layers + 1)
        base_loss, count = corpus_loss(model, calib)
        bar.advance(task)
        report = PruneReport(n_layers, calib.samples, count, base_loss, _ppl(base_loss))
        for layer in range(n_layers):
            with layers_removed(model, [layer]):
                loss, _ = corpus_loss(model, calib)
            ppl = _ppl(loss) if math.isfinite(loss) else math.inf
            report.scores.append(LayerScore(layer, loss, ppl, ppl - report.base_ppl))
            bar.advance(task)
    report.removed = select_layers(report.scores, num_prune)
    remove_layers(model, report.removed)
    report.pruned_loss, _ = corpus_loss(model, calib)
    report.pruned_ppl = _ppl(report.pruned_loss)
    return report


def scores_table(report: PruneReport) -> Any:
    """A rich table of ΔPPL per layer, the removed ones highlighted."""
    from rich.table import Table

    table = Table(
        title=f"ΔPPL per layer (base PPL {report.base_ppl:.4f}, {report.calibration_tokens} tokens)"
    )
    for name in ("layer", "PPL without it", "ΔPPL", "removed"):
        table.add_column(name, justify="right")
    for s in report.scores:
        removed = s.layer in report.removed
        style = "bold green" if removed else None
        table.add_row(
            str(s.layer),
            f"{s.ppl:.4f}",
            f"{s.delta_ppl:+.4f}",
            "yes" if removed else "",
            style=style,
        )
    table.caption = f"pruned model PPL: {report.pruned_ppl:.4f}" if report.pruned_ppl else None
    return table


def _finite(obj: Any) -> Any:
    """Strict JSON: non-finite floats (a layer whose removal breaks the model) become strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def save_pruned(
    model: Any, tokenizer: Any, output_dir: str | os.PathLike, report: PruneReport
) -> None:
    """Write the pruned checkpoint, tokenizer and report (JSON + Markdown) in one atomic step."""
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / REPORT_JSON, _finite(report.to_dict()))
        with atomic_file(Path(tmp) / REPORT_MD, "w", encoding="utf-8") as handle:
            handle.write(report.to_markdown())
