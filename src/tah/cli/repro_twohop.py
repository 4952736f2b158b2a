"""``tah repro twohop``: the depth-bound study (see :mod:`tah.repro.twohop`).

    tah repro twohop               # gate, then the four arms: 3 seeds, 2 workers
    tah repro twohop --quick       # smoke test of every code path (its numbers mean nothing)
    tah repro twohop --set base_steps=4000 --output runs/twohop-b
    tah repro twohop --export DIR  # then copy seed 0's TaH+ to DIR (tah demo --twohop's model)

Rerunning a command resumes: finished jobs are skipped.
"""

from __future__ import annotations

import argparse
from typing import Any

from tah.errors import ConfigError


def run_twohop(args: argparse.Namespace, config: Any, output: str) -> int:
    from rich.console import Console

    from tah.cli.render import workers_text
    from tah.repro.twohop import run_study

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
    for arm, stats in (results.get("aggregate") or {}).items():
        two = stats["two_hop"]
        console.print(f"  {arm:<12} two-hop {two['mean']:.1f} ± {two['std']:.1f} %")
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
