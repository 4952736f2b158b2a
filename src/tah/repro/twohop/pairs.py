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
    from tah.repro.twohop.runs import eval_batches, predict

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
    from tah.repro.twohop.jobs import VAL_SEED

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
    retrained = result.get("steps")
    lines = [
        (f"Decider retrained {retrained} steps on a mix of table sizes. " if retrained else "")
        + f"TaH+ `{result['model']}` (trained at {result['trained_pairs']} pairs), validation "
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


def retrain_decider(
    model_dir: str | Path,
    out_dir: str | Path,
    pairs_mix: tuple[int, ...] = PAIRS,
    steps: int = 2000,
    batch: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Stage 2 again on a checkpoint, from a fresh decider, on tables of every size in
    ``pairs_mix`` (one size per batch, drawn uniformly): backbone and LoRA frozen, the study's
    pos-weighted BCE at every position. Labels: the two-hop answers are hard (what the study's
    labeller marks when its base answers every one-hop query and no two-hop one, as the bundled
    seed-0 base does). Problems from the study's decider stream; evaluate on validation ones."""
    from tah import TaHForCausalLM
    from tah.data.twohop import sample_batch
    from tah.repro.twohop.jobs import DECIDER_STREAM
    from tah.training.losses import decider_bce_sum, decider_targets_mask

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    base_task = _task(model_dir)
    torch.manual_seed(seed)
    model = TaHForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for module in model.decider.modules():
        if module is not model.decider and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model.set_trainable(backbone=False, lora=False, decider=True)
    model.train()
    model.backbone.eval()
    params = list(model.decider_parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(1000 * seed + DECIDER_STREAM)
    losses = []
    for step in range(steps):
        pairs = pairs_mix[int(torch.randint(len(pairs_mix), (1,), generator=generator))]
        task = dataclasses.replace(base_task, pairs=pairs)
        rows = sample_batch(task, batch, generator)
        iters = _forced_labels(task, rows.kinds, task.length)
        out = model(rows.input_ids, max_depth=1)
        mask = decider_targets_mask(iters, rows.attention_mask, rows.labels, "all")
        total, count, _ = decider_bce_sum(out.decider_logits[..., 0], iters, mask, 1.0, 0.5)
        loss = total / max(count, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in optimizer.param_groups:  # cosine to zero, no warmup (a short run)
            group["lr"] = lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / steps)).item())
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    model.save_pretrained(out_dir)
    meta = json.loads((model_dir / "repro.json").read_text(encoding="utf-8"))
    meta["decider_retrained"] = {"pairs_mix": list(pairs_mix), "steps": steps, "seed": seed}
    (out_dir / "repro.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return {"final_loss": sum(losses[-100:]) / len(losses[-100:]), "steps": steps}
