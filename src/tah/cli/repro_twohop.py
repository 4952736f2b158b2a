"""``tah repro twohop``: the depth-bound study (see :mod:`tah.repro.twohop.study`).

    tah repro twohop               # gate, then the four arms: 3 seeds, 2 workers
    tah repro twohop --quick       # smoke test of every code path (its numbers mean nothing)
    tah repro twohop --set base_steps=4000 --output runs/twohop-b
    tah repro twohop --export DIR  # then copy seed 0's TaH+ to DIR (tah demo --twohop's model)
    tah repro twohop --decider-pairs 2,3,4,5,6,7,8 --output runs/decider-pairs
                                   # the bundled TaH+'s decider at other table sizes

Rerunning a command resumes: finished jobs are skipped.
"""

from __future__ import annotations

import argparse
from typing import Any

from tah.errors import ConfigError


def run_twohop(args: argparse.Namespace, config: Any, output: str) -> int:
    from rich.console import Console

    from tah.cli.render import workers_text
    from tah.repro.twohop.report import labels
    from tah.repro.twohop.study import run_study

    if getattr(args, "export_method", "tahplus") != "tahplus":
        raise ConfigError("tah repro twohop --export exports TaH+ only (--export-method tahplus)")
    console = Console()
    console.print(
        f"[bold]tah repro twohop[/] ({config.preset}): seeds {config.seeds}, "
        f"{workers_text(config)} → {output}"
    )
    results = run_study(config, output, show_progress=not args.no_progress)
    gate = results["gate"]
    if gate["passed"]:
        console.print("gate passed")
    elif args.quick:  # its runs are far too short to pass: --quick checks the code paths
        console.print(
            "gate FAILED, as expected with --quick (too short to pass; only the code ran)"
        )
    else:
        console.print("gate [red]FAILED[/]")
    # The report's arm names, not the job names (a results.json always holds its config).
    names = labels(results["config"])
    aggregate = results.get("aggregate") or {}
    width = max((len(names.get(arm, arm)) for arm in aggregate), default=0)
    for arm, stats in aggregate.items():
        two = stats["two_hop"]
        name = names.get(arm, arm)
        console.print(f"  {name:<{width}}  two-hop {two['mean']:.1f} ± {two['std']:.1f} %")
    minutes = results["wall_time_s_this_invocation"] / 60
    console.print(
        f"written {output}/results.md, results.json, results.png ({minutes:.1f} min this run)"
    )
    if getattr(args, "export", None):
        from tah.repro.export import export_twohop_checkpoint

        seed = config.seeds[0] if args.export_seed is None else args.export_seed
        path = export_twohop_checkpoint(output, seed, args.export)
        console.print(f"exported the TaH+ checkpoint of seed {seed} to {path}")
    return 0


def run_decider_pairs(args: argparse.Namespace) -> int:
    """``--decider-pairs``: :func:`tah.repro.twohop.pairs.decider_by_pairs`, written as
    ``decider-pairs.json`` and ``.md`` into ``--output``."""
    from pathlib import Path

    from rich.console import Console

    from tah.cli.demo_twohop import bundled_twohop_path
    from tah.io import atomic_file, write_json
    from tah.repro.twohop.pairs import decider_by_pairs, markdown

    pairs = _pairs_list("--decider-pairs", args.decider_pairs)
    model = Path(args.decider_model) if args.decider_model else bundled_twohop_path()
    problems = 40 if args.quick else 500
    out = Path(args.output or "runs/decider-pairs")
    out.mkdir(parents=True, exist_ok=True)
    results = [decider_by_pairs(model, pairs, problems=problems)]
    if getattr(args, "decider_train_mix", None):
        from tah.repro.twohop.pairs import retrain_decider

        mix = _pairs_list("--decider-train-mix", args.decider_train_mix)
        trained = retrain_decider(model, out / "model", mix, steps=5 if args.quick else 2000)
        results.append(decider_by_pairs(out / "model", pairs, problems=problems) | trained)
    write_json(out / "decider-pairs.json", {"runs": results})
    text = "\n".join(markdown(result) for result in results)
    with atomic_file(out / "decider-pairs.md", "w", encoding="utf-8") as handle:
        handle.write(text)
    Console().print(text)
    return 0


def _pairs_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected a comma list, e.g. 2,3,4") from None
