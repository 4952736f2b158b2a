"""How TaH+'s learned decider holds up on tables of other sizes (issue 23).

The study trains and tests at one table size (8 pairs). With fewer or more pairs per table the
sequence, and with it the decider's input, changes, while the lookups themselves do not. Here a
TaH+ checkpoint is evaluated on validation problems (never the test stream) at each table size
two ways: routed by its learned decider, and with the second pass forced on exactly the tokens
that predict a two-hop answer (and nowhere else). The gap between the two is what the decider
loses; the forced run says what the second pass can do. The decider is scored at answer
positions against the two-hop answers (the tokens this task's hard-token labels mark when the
base answers every one-hop query and no two-hop one; the base itself is not bundled).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from tah.data.twohop import TWO_HOP, TwoHopTask
from tah.errors import ConfigError

PAIRS = (2, 3, 4, 5, 6, 7, 8)


def _task(model_dir: Path) -> TwoHopTask:
    meta = model_dir / "repro.json"
    if not meta.is_file():
        raise ConfigError(
            f"{model_dir} has no repro.json: give a TaH+ checkpoint exported by "
            "`tah repro twohop --export DIR` (it records the task)"
        )
    return TwoHopTask(**json.loads(meta.read_text(encoding="utf-8"))["task"])


def _forced_labels(task: TwoHopTask, kinds: torch.Tensor, length: int) -> torch.Tensor:
    """Iteration labels: 2 passes at the tokens that predict a two-hop answer, 1 elsewhere."""
    iters = torch.ones(kinds.shape[0], length, dtype=torch.long)
    where = task.answer_positions() - 1
    iters[:, where] += (kinds == TWO_HOP).long()
    return iters


@torch.no_grad()
def _at_pairs(learned, forced, task: TwoHopTask, problems: int, seed: int, tau: float) -> dict:
    from tah.repro.twohop_runs import eval_batches, predict

    batches = eval_batches(task, problems, seed)
    labels = {id(b): _forced_labels(task, b.kinds, task.length) for b in batches}

    def learned_forward(batch):
        out = learned(batch.input_ids, threshold=tau)
        return out.logits, out.iter_counts

    def forced_forward(batch):
        out = forced(batch.input_ids, iter_labels=labels[id(batch)])
        return out.logits, out.iter_counts

    routed = predict(learned_forward, task, batches)
    ceiling = predict(forced_forward, task, batches)
    two = routed.kinds == TWO_HOP
    fired = routed.answers_iterated
    hits = int((fired & two).sum())
    return {
        "pairs": task.pairs,
        "problems": problems,
        "learned": _accuracies(routed),
        "forced_on_two_hop": _accuracies(ceiling),
        "decider_at_answers": {
            "recall": hits / max(int(two.sum()), 1),
            "precision": hits / int(fired.sum()) if int(fired.sum()) else None,
            "fired_share": float(fired.float().mean()),
        },
        "two_hop_misses_not_fired": int((two & ~routed.correct & ~fired).sum()),
        "two_hop_misses": int((two & ~routed.correct).sum()),
    }


def _accuracies(pred) -> dict[str, Any]:
    summary = pred.summary()
    return {
        "two_hop": summary["accuracy"]["gf"],
        "one_hop": summary["accuracy"]["one_hop"],
        "share_tokens_depth2": summary["share_tokens_iterating"],
    }


def decider_by_pairs(
    model_dir: str | Path,
    pairs: tuple[int, ...] = PAIRS,
    problems: int = 500,
    seed: int | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The checkpoint's two-hop accuracy at each table size, learned decider vs second pass
    forced on two-hop answers, on validation problems (seed: the study's validation stream)."""
    from tah import TaHForCausalLM
    from tah.repro.twohop_jobs import VAL_SEED

    model_dir = Path(model_dir)
    base_task = _task(model_dir)
    bad = [p for p in pairs if not 2 <= p <= base_task.entities]
    if bad:
        raise ConfigError(f"pairs {bad} out of range: 2 to {base_task.entities} (the entities)")
    torch.manual_seed(0)
    learned = TaHForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    forced = TaHForCausalLM.from_pretrained(model_dir, decider="label", dtype=torch.float32).eval()
    tau = float(learned.config.threshold if threshold is None else threshold)
    rows = [
        _at_pairs(
            learned,
            forced,
            dataclasses.replace(base_task, pairs=p),
            problems,
            VAL_SEED if seed is None else seed,
            tau,
        )
        for p in pairs
    ]
    return {
        "model": str(model_dir),
        "trained_pairs": base_task.pairs,
        "threshold": tau,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"TaH+ `{result['model']}` (trained at {result['trained_pairs']} pairs), validation "
        f"problems, τ = {result['threshold']}; accuracies in %.",
        "",
        "| pairs | two-hop, learned decider | two-hop, 2nd pass forced on two-hop answers | "
        "one-hop, learned | decider recall at two-hop answers | precision | misses without "
        "the decider firing / misses |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        d = r["decider_at_answers"]
        precision = "–" if d["precision"] is None else f"{100 * d['precision']:.1f}"
        lines.append(
            f"| {r['pairs']} | {100 * r['learned']['two_hop']:.1f} | "
            f"{100 * r['forced_on_two_hop']['two_hop']:.1f} | {100 * r['learned']['one_hop']:.1f} "
            f"| {100 * d['recall']:.1f} | {precision} | "
            f"{r['two_hop_misses_not_fired']} / {r['two_hop_misses']} |"
        )
    return "\n".join(lines) + "\n"
