"""Training and evaluation of one model of the two-hop study (see :mod:`tah.repro.twohop.study`).

Why an in-process loop instead of ``tah train``: every step draws fresh problems from the
generator (no dataset on disk can hold them), and a 4-layer model takes ~70 ms a step, so the
per-step work of the general trainer would dominate. The models and the losses are the library's:
the Standard arms are plain Hugging Face Qwen3 models trained with
:func:`tah.training.losses.next_token_ce_sum`; TaH+ and AlwaysThink are
:class:`tah.TaHForCausalLM` trained with the same loss under label routing (stage 1: backbone +
LoRA), and the decider with :func:`tah.training.losses.decider_bce_sum` on depth-1 features
with everything else frozen (stage 2), as in :mod:`tah.training.stages`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tah.data.twohop import (
    KINDS,
    TWO_HOP,
    TwoHopBatch,
    TwoHopTask,
    sample_batch,
    sample_mixed_batch,
)
from tah.training.losses import (
    IGNORE,
    decider_bce_sum,
    decider_targets_mask,
    next_token_ce_sum,
)

Progress = Callable[[int], None]  # called with the number of steps just done


@dataclass(frozen=True)
class Shape:
    """A Qwen3 decoder's size (by default that of the first feasibility runs,
    docs/repro-twohop/NOTES.md)."""

    layers: int = 2
    hidden: int = 64
    intermediate: int = 192
    heads: int = 4
    kv_heads: int = 2
    # Qwen3 normalises queries and keys per head (q_norm/k_norm), which caps attention logits at
    # sqrt(head_dim) until the norm weights grow; "llama" has no such cap.
    family: str = "qwen3"
    init_std: float = 0.02  # transformers' default initializer_range
    # Tied input/output embeddings: the residual direction that predicts a token is the one
    # that token's embedding writes, so a later layer can read a computed answer like an input.
    tie_embeddings: bool = False


@dataclass
class TrainSettings:
    steps: int
    batch: int = 32
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    data_seed: int = 0  # the problem stream: equal seeds give identical rows in identical order
    # Problems per batch in the written-out format (the rest in the task's own); 0: none
    written_per_batch: int = 0


# ------------------------------------------------------------------ models
def new_standard(task: TwoHopTask, shape: Shape, seed: int) -> nn.Module:
    """A freshly initialised decoder-only causal LM of ``shape`` over the task's vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {"use_sliding_window": False} if shape.family == "qwen3" else {}
    config = AutoConfig.for_model(
        shape.family,
        vocab_size=task.vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.hidden // shape.heads,
        max_position_embeddings=max(64, task.length),
        tie_word_embeddings=shape.tie_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=0,
        initializer_range=shape.init_std,
        **extra,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).float()


def deepen(model: nn.Module, layers: int, seed: int) -> nn.Module:
    """A copy of ``model`` grown to ``layers`` layers that computes exactly the same function:
    :func:`tah.repro.deepen.deepen` with the ``cycle`` placement (new layer ``i`` starts as a
    copy of layer ``i mod L`` with zeroed output projections). ``seed`` is kept for callers;
    every weight is copied, so nothing is drawn."""
    from tah.repro.deepen import deepen as grow

    old = int(model.config.num_hidden_layers)
    if layers % old:
        raise ValueError(f"deep_layers ({layers}) must be a multiple of the base's ({old})")
    return grow(model, factor=layers // old, placement="cycle")


def decider_layers(layers: int, reads: str = "middle_last") -> list[int]:
    """The layers whose hidden states the decider reads: the middle and the last one, or all."""
    if reads == "all":
        return list(range(1, layers + 1))
    if reads == "middle_last":
        return sorted({max(1, layers // 2), layers})
    raise ValueError(f"decider_reads must be 'middle_last' or 'all', got {reads!r}")


def tah_config(
    decider: str,
    lora_r: int,
    decider_hidden: int,
    layers: int = 2,
    reads: str = "middle_last",
    previous_token: bool = False,
) -> Any:
    """TaH settings for a ``layers``-deep base; the decider reads the layers ``reads`` names
    (of the token, and with ``previous_token`` of the token before it too)."""
    from tah import TaHConfig

    return TaHConfig(
        max_iter=2,
        decider=decider,
        threshold=0.5,
        topk=None,  # the vocabulary is 79 words: the soft embedding mixes all of them
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        lora_dropout=0.0,
        decider_topk=8,
        decider_hidden_dims=[decider_hidden, decider_hidden],
        decider_expansion=2,
        decider_dropout=0.0,
        decider_layers=decider_layers(layers, reads),
        decider_previous_token=previous_token,
    )


def new_tah(base: nn.Module, config: Any, seed: int) -> nn.Module:
    """TaH around a copy of ``base`` with a fresh LoRA for the deeper pass, drawn from ``seed``
    (unseeded, it would depend on what the process drew before)."""
    import copy

    from tah import TaHForCausalLM

    torch.manual_seed(seed)
    return TaHForCausalLM.from_base(copy.deepcopy(base), config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ labels
@torch.no_grad()
def hard_labels(labeller: nn.Module, batch: TwoHopBatch) -> torch.Tensor:
    """Iteration labels (HF convention: at the predicting position): 2 where the labeller's
    greedy next token is wrong on a supervised token, 1 elsewhere."""
    logits = labeller(input_ids=batch.input_ids).logits
    wrong = logits[:, :-1].argmax(-1) != batch.labels[:, 1:]
    supervised = batch.labels[:, 1:] != IGNORE
    iters = torch.ones_like(batch.input_ids)
    iters[:, :-1] += (wrong & supervised).long()
    return iters


# ------------------------------------------------------------------ training
def _cosine(optimizer: torch.optim.Optimizer, settings: TrainSettings):
    from transformers.optimization import get_cosine_schedule_with_warmup

    warm = math.ceil(settings.steps * settings.warmup_ratio)
    return get_cosine_schedule_with_warmup(optimizer, warm, settings.steps)


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)  # mean loss per logged window
    every: int = 100


def train_loop(
    params: list[nn.Parameter],
    loss_fn: Callable[[TwoHopBatch], torch.Tensor],
    task: TwoHopTask,
    settings: TrainSettings,
    progress: Progress | None = None,
    probe: Callable[[int], None] | None = None,
    probe_every: int = 500,
) -> TrainLog:
    """AdamW + cosine with warmup over fresh problems; ``loss_fn`` returns a mean loss.

    ``probe(step)`` runs every ``probe_every`` steps (a learning curve on validation problems).
    """
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = _cosine(optimizer, settings)
    generator = torch.Generator().manual_seed(settings.data_seed)
    log = TrainLog()
    window = 0.0
    for step in range(1, settings.steps + 1):
        batch = sample_mixed_batch(task, settings.batch, settings.written_per_batch, generator)
        loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        window += float(loss.detach())
        if step % log.every == 0 or step == settings.steps:
            log.losses.append(window / (step - log.every * (len(log.losses))))
            window = 0.0
        if progress is not None:
            progress(1)
        if probe is not None and (step % probe_every == 0 or step == settings.steps):
            probe(step)
    return log


def standard_loss(model: nn.Module) -> Callable[[TwoHopBatch], torch.Tensor]:
    def loss_fn(batch: TwoHopBatch) -> torch.Tensor:
        out = model(input_ids=batch.input_ids, use_cache=False)
        total, count = next_token_ce_sum(out.logits, batch.labels)
        return total / max(count, 1)

    return loss_fn


def stage1_loss(
    model: nn.Module, labeller: nn.Module | None
) -> Callable[[TwoHopBatch], torch.Tensor]:
    """Label-routed CE (stage 1); ``labeller=None`` routes every token to depth 2 (AlwaysThink)."""

    def loss_fn(batch: TwoHopBatch) -> torch.Tensor:
        if labeller is None:
            iters = torch.full_like(batch.input_ids, 2)
        else:
            iters = hard_labels(labeller, batch)
        out = model(batch.input_ids, iter_labels=iters, ensure_deep_pass=True)
        total, count = next_token_ce_sum(out.logits, batch.labels)
        return total / max(count, 1)

    return loss_fn


def stage2_loss(
    model: nn.Module, labeller: nn.Module, pos_weight: float
) -> Callable[[TwoHopBatch], torch.Tensor]:
    """Pos-weighted BCE of the decider on depth-1 features (every position: prompt tokens are
    negatives, as in the reference)."""

    def loss_fn(batch: TwoHopBatch) -> torch.Tensor:
        iters = hard_labels(labeller, batch)
        out = model(batch.input_ids, max_depth=1)
        rows = decider_targets_mask(iters, batch.attention_mask, batch.labels, "all")
        total, count, _ = decider_bce_sum(out.decider_logits[..., 0], iters, rows, pos_weight, 0.5)
        return total / max(count, 1)

    return loss_fn


# ------------------------------------------------------------------ evaluation
def eval_batches(task: TwoHopTask, problems: int, seed: int, batch: int = 250) -> list[TwoHopBatch]:
    generator = torch.Generator().manual_seed(seed)
    out, left = [], problems
    while left > 0:
        out.append(sample_batch(task, min(batch, left), generator))
        left -= batch
    return out


@dataclass
class Predictions:
    """Per-query outcomes over an evaluation set, in a fixed order (for paired tests)."""

    kinds: torch.Tensor  # (N,) query kind codes
    correct: torch.Tensor  # (N,) bool
    answers_iterated: torch.Tensor  # (N,) bool: the answer-predicting token ran depth 2
    tokens_iterated: float  # share of all tokens that ran depth 2
    predicted: torch.Tensor  # (N,) predicted token ids
    intermediates: torch.Tensor  # (N,) F(x) of two-hop queries, -1 for one-hop ones

    def accuracy(self, kind: int | None = None) -> float:
        mask = torch.ones_like(self.correct) if kind is None else self.kinds == kind
        return float(self.correct[mask].float().mean()) if bool(mask.any()) else float("nan")

    def summary(self) -> dict[str, Any]:
        two = self.kinds == TWO_HOP
        return {
            "accuracy": {kind: self.accuracy(i) for i, kind in enumerate(KINDS)}
            | {"all": self.accuracy(), "one_hop": float(self.correct[~two].float().mean())},
            "share_answers_iterating": float(self.answers_iterated.float().mean()),
            "share_two_hop_answers_iterating": float(self.answers_iterated[two].float().mean()),
            "share_tokens_iterating": self.tokens_iterated,
            # How often a two-hop answer is the intermediate F(x) instead of G(F(x)): read on a
            # TaH model's depth 1 alone, it says whether the first pass hands the second pass
            # the token the second lookup needs (the mechanism TaH's soft embedding relies on).
            "two_hop_predicted_intermediate": float(
                (self.predicted[two] == self.intermediates[two]).float().mean()
            ),
            "queries": {kind: int((self.kinds == i).sum()) for i, kind in enumerate(KINDS)},
        }


@torch.no_grad()
def predict(
    forward: Callable[[TwoHopBatch], tuple[torch.Tensor, torch.Tensor | None]],
    task: TwoHopTask,
    batches: list[TwoHopBatch],
) -> Predictions:
    """``forward`` returns (logits, iteration counts or None); answers are read teacher-forced
    (the earlier queries' gold answers are in context, as in training)."""
    where = task.answer_positions() - 1
    kinds, correct, iterated, predicted, intermediates = [], [], [], [], []
    deep, total = 0.0, 0
    for batch in batches:
        logits, counts = forward(batch)
        guess = logits[:, where].argmax(-1)
        predicted.append(guess.flatten())
        correct.append((guess == batch.answers).flatten())
        kinds.append(batch.kinds.flatten())
        intermediates.append(batch.intermediates.flatten())
        if counts is None:
            iterated.append(torch.zeros_like(guess, dtype=torch.bool).flatten())
        else:
            iterated.append((counts[:, where] > 1).flatten())
            deep += float((counts > 1).sum())
        total += batch.input_ids.numel()
    return Predictions(
        torch.cat(kinds),
        torch.cat(correct),
        torch.cat(iterated),
        deep / total,
        torch.cat(predicted),
        torch.cat(intermediates),
    )


@torch.no_grad()
def written_second_step_accuracy(
    forward: Callable[[TwoHopBatch], tuple[torch.Tensor, torch.Tensor | None]],
    task: TwoHopTask,
    batches: list[TwoHopBatch],
) -> float:
    """On written-out two-hop queries (``gf x F(x) ?``): how often the model, given the written
    intermediate, predicts G(F(x)). The second lookup a base taught that format can do."""
    if not task.written_intermediate:
        raise ValueError("written_second_step_accuracy needs a task with written_intermediate")
    slots = task.answer_positions()
    right = count = 0
    for batch in batches:
        logits, _ = forward(batch)
        guess = logits[:, slots].argmax(-1)
        two = batch.kinds == TWO_HOP
        right += int((guess == batch.input_ids[:, slots + 1])[two].sum())
        count += int(two.sum())
    return right / max(count, 1)


def standard_forward(model: nn.Module):
    model.eval()
    return lambda batch: (model(input_ids=batch.input_ids, use_cache=False).logits, None)


def tah_forward(
    model: nn.Module,
    *,
    labeller: nn.Module | None = None,
    threshold: float | None = None,
    max_depth: int | None = None,
    always: bool = False,
):
    """TaH inference: oracle routing (``labeller``), the learned decider at ``threshold``,
    depth 1 only (``max_depth=1``) or every token iterating (``always``)."""
    model.eval()

    def forward(batch: TwoHopBatch):
        iters = None
        if labeller is not None:
            iters = hard_labels(labeller, batch)
        elif always:
            iters = torch.full_like(batch.input_ids, 2)
        out = model(batch.input_ids, iter_labels=iters, threshold=threshold, max_depth=max_depth)
        return out.logits, out.iter_counts

    return forward


@torch.no_grad()
def decider_scores(
    model: nn.Module, labeller: nn.Module, batches: list[TwoHopBatch]
) -> dict[str, torch.Tensor]:
    """The learned decider's continue-probability and the hard labels, at every position and
    at answer-predicting positions."""
    model.eval()
    probs, hard, answer = [], [], []
    for batch in batches:
        iters = hard_labels(labeller, batch)
        out = model(batch.input_ids, max_depth=1)
        probs.append(torch.sigmoid(out.decider_logits[..., 0]).flatten())
        hard.append((iters > 1).flatten())
        supervised = torch.zeros_like(batch.labels, dtype=torch.bool)
        supervised[:, :-1] = batch.labels[:, 1:] != IGNORE
        answer.append(supervised.flatten())
    return {"prob": torch.cat(probs), "hard": torch.cat(hard), "answer": torch.cat(answer)}


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    uniq, inverse, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)
    below = counts.cumsum(0) - counts
    mean_rank = below.double() + (counts.double() + 1) / 2  # ties share their average rank
    r_pos = float(mean_rank[inverse][positive].sum())
    return (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
