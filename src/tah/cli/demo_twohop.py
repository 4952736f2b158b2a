"""``tah demo --twohop``: the bundled two-hop TaH+ model answers sample lookup problems.

The checkpoint in ``tah/assets/twohop-tah`` is seed 0's TaH+ from ``tah repro twohop`` (its
``repro.json`` says how it was trained and what it scored). A 2-layer model does one lookup but
not two; TaH+ gives a second pass to the few tokens its decider picks. For every query the demo
prints the gold answer, TaH+'s answer, whether the answer token took the second pass, and what
the first pass alone would answer, marking each right or wrong. Problems are drawn from a
stream no training, validation or test split of the study uses.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: Problem stream of the demo, apart from the study's training (< 10**5), test (10**6) and
#: validation (2 * 10**6) streams.
DEMO_STREAM = 3 * 10**6


def bundled_twohop_path() -> Path:
    return Path(__file__).resolve().parents[1] / "assets" / "twohop-tah"


def _load(model_dir: Path, threshold: float | None):
    import json

    from tah import TaHForCausalLM
    from tah.data.twohop import TwoHopTask
    from tah.errors import CheckpointError

    facts_path = model_dir / "repro.json"
    if not (model_dir / "tah_config.json").is_file() or not facts_path.is_file():
        raise CheckpointError(
            f"{model_dir} is not a two-hop TaH checkpoint (needs tah_config.json and the "
            "repro.json that `tah repro twohop --export DIR` writes)"
        )
    try:
        facts = json.loads(facts_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{facts_path} is not valid JSON: {exc}") from None
    if not isinstance(facts, dict) or "task" not in facts:
        raise CheckpointError(f"{facts_path} names no two-hop task: not a two-hop checkpoint")
    overrides = {} if threshold is None else {"threshold": threshold}
    model = TaHForCausalLM.from_pretrained(str(model_dir), **overrides).eval()
    return model, TwoHopTask(**facts["task"]), facts


def solve(model, task, seed: int, count: int) -> list[dict[str, Any]]:
    """``count`` problems from the demo stream, each query read teacher-forced as in the study:
    TaH+'s answer, whether it took the second pass, and the first pass's answer alone.

    Teacher-forced, the ";" after each answer comes from the problem itself: the model was
    never trained to write it (the loss covers answer tokens only), so a free-running decoder
    would have to insert it after every answer."""
    import torch

    from tah.data.twohop import KINDS, sample_batch, table_pairs, vocabulary
    from tah.repro.twohop_runs import tah_forward

    batch = sample_batch(task, count, torch.Generator().manual_seed(DEMO_STREAM + seed))
    with torch.no_grad():
        logits, counts = tah_forward(model)(batch)
        first_logits, _ = tah_forward(model, max_depth=1)(batch)
    words = vocabulary(task)
    where = task.answer_positions() - 1
    guess, first = logits[:, where].argmax(-1), first_logits[:, where].argmax(-1)
    deep = counts[:, where] > 1
    problems = []
    for row in range(count):
        ids = batch.input_ids[row].tolist()
        f_pairs, g_pairs = (
            [(words[a], words[b]) for a, b in pairs] for pairs in table_pairs(task, ids)
        )
        queries = []
        for q in range(task.queries):
            start = task.first_query + task.query_len * q
            gold = int(batch.answers[row, q])
            queries.append(
                {
                    "kind": KINDS[int(batch.kinds[row, q])],
                    "query": f"{words[ids[start]]} {words[ids[start + 1]]}",
                    "gold": words[gold],
                    "answer": words[int(guess[row, q])],
                    "correct": int(guess[row, q]) == gold,
                    "second_pass": bool(deep[row, q]),
                    "first_pass_answer": words[int(first[row, q])],
                    "first_pass_correct": int(first[row, q]) == gold,
                }
            )
        problems.append({"F": f_pairs, "G": g_pairs, "queries": queries})
    return problems


def tally(problems: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, kinds in (("two_hop", {"gf"}), ("one_hop", {"f", "g"})):
        rows = [q for p in problems for q in p["queries"] if q["kind"] in kinds]
        out[name] = {
            "queries": len(rows),
            "tah_right": sum(q["correct"] for q in rows),
            "first_pass_right": sum(q["first_pass_correct"] for q in rows),
            "second_pass": sum(q["second_pass"] for q in rows),
        }
    return out


def run_twohop_demo(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from tah.errors import ConfigError

    if args.count < 1:
        raise ConfigError(f"--count must be >= 1, got {args.count}")
    if args.problem or args.decider or args.difficulty:
        raise ConfigError(
            "--twohop draws its own lookup problems: drop --problem, --decider and --difficulty"
        )
    model_dir = Path(args.model) if args.model else bundled_twohop_path()
    model, task, facts = _load(model_dir, args.threshold)
    problems = solve(model, task, args.seed, args.count)
    totals = tally(problems)
    if args.json:
        print(
            json.dumps(
                {"problems": problems, "totals": totals, "threshold": model.config.threshold}
            )
        )
        return 0
    console = Console(highlight=False)
    name = "bundled two-hop TaH+ model" if args.model is None else str(model_dir)
    console.print(
        f"[bold]{name}[/], τ = {model.config.threshold:g}: f x = F(x), g y = G(y), gf x = G(F(x))"
    )
    mark = {True: "[green]✓[/]", False: "[red]✗[/]"}
    for i, problem in enumerate(problems, 1):
        console.print()
        console.print(f"[bold]Problem {i}/{len(problems)}[/]")
        console.print("  F: " + "  ".join(f"{a}→{b}" for a, b in problem["F"]), style="dim")
        console.print("  G: " + "  ".join(f"{a}→{b}" for a, b in problem["G"]), style="dim")
        for q in problem["queries"]:
            passes = "[magenta]2 passes[/]" if q["second_pass"] else "1 pass  "
            console.print(
                f"  {q['query']:<8} → {q['gold']:<4} TaH+ {q['answer']:<4} {mark[q['correct']]} "
                f"({passes})   first pass alone: {q['first_pass_answer']:<4} "
                f"{mark[q['first_pass_correct']]}"
            )
    console.print()
    for label, key in (("two-hop", "two_hop"), ("one-hop", "one_hop")):
        t = totals[key]
        console.print(
            f"[bold]{label}[/]: TaH+ {t['tah_right']} of {t['queries']} right "
            f"({t['second_pass']} took the second pass); first pass alone {t['first_pass_right']}"
        )
    if facts.get("summary"):
        console.print(f"[dim]{facts['summary']}[/]")
    return 0
