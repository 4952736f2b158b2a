"""``tah sweep``: accuracy and share of iterating tokens against the decider threshold τ.

Either run the evaluations (same arguments as ``tah eval`` plus ``--thresholds``), one run per
τ under ``--output``, or collect finished runs with ``--runs``. Writes sweep.json, sweep.md and
sweep.png.

Examples::

    tah sweep --model ckpt/tah --datasets gsm8k,math500 --thresholds 0.5,0.7,0.9
    tah sweep --runs eval_runs/tah-tau0.5 eval_runs/tah-tau0.9 --output sweeps/tah
"""

from __future__ import annotations

import argparse

from tah.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tah.cli.eval_args import add_eval_arguments

    parser.add_argument("--thresholds", default=None, help="comma list of τ values to evaluate")
    parser.add_argument(
        "--runs", nargs="+", default=None, help="collect these finished runs instead of evaluating"
    )
    add_eval_arguments(parser)


def _finish(run_dirs: list[str], output: str) -> int:
    from rich.console import Console
    from rich.markdown import Markdown

    from tah.evaluation.sweep import collect, to_markdown, write_sweep

    sweep = collect(run_dirs)
    paths = write_sweep(sweep, output)
    Console().print(Markdown(to_markdown(sweep)))
    print(f"wrote {paths['markdown']}, {paths['json']} and {paths['png']}")
    return 0


def run_from_eval_args(args: argparse.Namespace) -> int:
    """Evaluate every threshold, then collect (also used by ``tah eval --thresholds``)."""
    from tah.cli.eval_args import config_from_args
    from tah.evaluation.sweep import parse_thresholds, run_sweep

    thresholds = parse_thresholds(args.thresholds)
    if args.threshold is not None:
        raise ConfigError("give either --threshold or --thresholds, not both")
    config = config_from_args(args)
    if args.output is None:
        config.output = config.output + "-sweep"
    results = run_sweep(config, thresholds)
    return _finish([r.output for r in results], config.output)


def run(args: argparse.Namespace) -> int:
    if args.runs:
        if args.thresholds:
            raise ConfigError("give either --runs (collect) or --thresholds (evaluate), not both")
        return _finish(args.runs, args.output or "sweep")
    if not args.thresholds:
        raise ConfigError("tah sweep needs --thresholds 0.5,0.7,0.9 (or --runs RUN... to collect)")
    return run_from_eval_args(args)
