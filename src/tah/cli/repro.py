"""``tah repro tiny``: the paper's whole pipeline at laptop scale (see :mod:`tah.repro.tiny.study`).

    tah repro tiny                 # the reported table: 3 seeds, ~45-55 min on 2 idle cores
    tah repro tiny --quick         # CI smoke: one seed, tiny everything, ~1 min on idle cores
    tah repro tiny --set finetune_steps=600 --set threshold=0.7 --output runs/repro-b
    tah repro twohop               # the depth-bound study (see tah.repro.twohop)
    tah repro plateau              # word problems at Standard's plateau (see tah.repro.plateau)

Rerunning a command resumes: finished steps are skipped.
"""

from __future__ import annotations

import argparse
from typing import Any

from tah.cli.common_args import add_overrides_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scale",
        choices=["tiny", "twohop", "plateau"],
        help="which study: 'tiny' (the paper's pipeline), 'twohop' (the depth-bound task) or "
        "'plateau' (word problems once Standard has stopped improving)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke-test preset: one seed, a few minutes"
    )
    parser.add_argument(
        "--output", default=None, help="run folder (default runs/repro-tiny[-quick])"
    )
    parser.add_argument("--seeds", default=None, help="comma list of seeds, e.g. 0,1,2")
    add_overrides_argument(
        parser,
        "override a setting of the study (tiny: tah.repro.tiny.config.ReproConfig, twohop: "
        "tah.repro.twohop.config.TwoHopConfig; --show-config lists them), e.g. --set "
        "finetune_steps=600",
    )
    parser.add_argument("--workers", type=int, default=None, help="parallel steps (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--show-config", action="store_true", help="print the settings and exit")
    parser.add_argument(
        "--export",
        metavar="DIR",
        help="afterwards, copy a TaH checkpoint of --export-seed to DIR (with repro.json)",
    )
    parser.add_argument(
        "--export-seed", type=int, default=None, help="seed to export (default: the first)"
    )
    parser.add_argument(
        "--decider-pairs",
        metavar="LIST",
        default=None,
        help="twohop: instead of the study, evaluate a TaH+ checkpoint's decider on validation "
        "problems at these table sizes, e.g. 2,3,4,5,6,7,8 (learned vs forced second pass)",
    )
    parser.add_argument(
        "--decider-model",
        metavar="DIR",
        default=None,
        help="the TaH+ checkpoint for --decider-pairs (default: the bundled seed-0 model)",
    )
    parser.add_argument(
        "--decider-train-mix",
        metavar="LIST",
        default=None,
        help="with --decider-pairs: first train a fresh decider for that checkpoint on tables "
        "of these sizes (OUTPUT/model) and evaluate it beside the original",
    )
    parser.add_argument(
        "--export-method",
        choices=("tahplus", "tah"),
        default="tahplus",
        help="which TaH model to export: tahplus (unpruned, what tah demo ships) or tah (pruned)",
    )


def configure(args: argparse.Namespace, make_preset, full: str) -> tuple[Any, str] | None:
    """The study's settings from ``--quick`` / ``--seeds`` / ``--workers`` / ``--set``, and its run
    folder; None when ``--show-config`` printed them (shared by every ``tah repro`` study)."""
    import json

    config = make_preset("quick" if args.quick else full)
    overrides = list(args.overrides)
    if args.seeds is not None:
        overrides.append(f"seeds=[{args.seeds}]")
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    config = config.with_overrides(overrides)
    if args.show_config:
        print(json.dumps(config.to_dict(), indent=2))
        return None
    name = f"runs/repro-{args.scale}"
    return config, args.output or (f"{name}-quick" if args.quick else name)


def silence_transformers_progress() -> None:
    """No "Loading weights" / "Writing model shards" bars from transformers, here and in the
    worker processes (they read the environment variable when they import it)."""
    import os

    from transformers.utils import logging as hf_logging

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    hf_logging.disable_progress_bar()


def run(args: argparse.Namespace) -> int:
    if args.no_progress:
        silence_transformers_progress()
    if args.scale == "twohop" and getattr(args, "decider_pairs", None):
        from tah.cli.repro_twohop import run_decider_pairs

        return run_decider_pairs(args)
    if args.scale == "twohop":
        from tah.cli.repro_twohop import run_twohop
        from tah.repro.twohop.study import preset as twohop_preset

        configured = configure(args, twohop_preset, "full")
        return 0 if configured is None else run_twohop(args, *configured)
    if args.scale == "plateau":
        from tah.repro.plateau.config import preset as plateau_preset

        configured = configure(args, plateau_preset, "plateau")
        return 0 if configured is None else _run_plateau(args, *configured)

    from rich.console import Console

    from tah.repro.tiny.config import preset

    configured = configure(args, preset, "tiny")
    if configured is None:
        return 0
    config, output = configured

    from tah.cli.render import workers_text
    from tah.repro.tiny.report import rich_table
    from tah.repro.tiny.study import run_repro

    console = Console()
    console.print(
        f"[bold]tah repro tiny[/] ({config.preset}): seeds {config.seeds}, "
        f"{workers_text(config)} → {output}"
    )
    from tah.cli import main

    results = run_repro(config, output, show_progress=not args.no_progress, command=main)
    console.print(rich_table(results))
    minutes = results["wall_time_s_this_invocation"] / 60
    console.print(
        f"written {output}/results.md, results.json, results.png ({minutes:.1f} min this run)"
    )
    if args.export:
        from tah.repro.export import export_checkpoint

        seed = config.seeds[0] if args.export_seed is None else args.export_seed
        path = export_checkpoint(output, seed, args.export, method=args.export_method)
        console.print(f"exported the {args.export_method} checkpoint of seed {seed} to {path}")
    return 0


def _run_plateau(args: argparse.Namespace, config: Any, output: str) -> int:
    from rich.console import Console

    from tah.cli import main
    from tah.cli.render import workers_text
    from tah.repro.plateau.study import run_plateau

    console = Console()
    console.print(
        f"[bold]tah repro plateau[/] ({config.preset}): seeds {config.seeds}, "
        f"{workers_text(config)} → {output}"
    )
    results = run_plateau(config, output, show_progress=not args.no_progress, command=main)
    gate = results.get("gate") or {}
    verdict = "passed" if gate.get("passed") else "FAILED (TaH arms exploratory)"
    console.print(f"gate: {verdict}; checks {gate.get('checks')}")
    for key, agg in results["aggregate"].items():
        stat = agg["accuracy"]
        if stat.get("mean") is not None:
            console.print(
                f"  {key:18s} {stat['mean']:5.1f} ± {stat['std']:.1f} %  {stat['values']}"
            )
    minutes = (results.get("wall_time_s_this_invocation") or 0.0) / 60
    console.print(f"written {output}/results.md, results.json, results.png ({minutes:.1f} min)")
    return 0
