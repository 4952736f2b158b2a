"""``tah eval``: evaluate a model (or a baseline) on math benchmarks; resumable and parallel.

Examples::

    tah eval --model ckpt/tah --datasets gsm8k,math500 --backend tah --samples 1 --jobs 2
    tah eval --model Qwen/Qwen3-1.7B --datasets aime24 --backend hf --samples 8
    tah eval --model ckpt/tah --datasets gsm8k --backend tah --decider always     # AlwaysThink
    tah eval --model ckpt/tah --datasets gsm8k --backend oracle --reference big-model
    tah eval --backend routing --small runs/0.6b --large runs/4b --target-params 1.7B
    tah eval --model ckpt/tah --datasets gsm8k --thresholds 0.5,0.7,0.9            # = tah sweep
    tah eval --model ckpt/tah --datasets gsm8k --backend-option generator=core      # no engine

The hf and tah backends generate on the engine with continuous batching where it runs the
model (Llama / Qwen2 / Qwen3, duo-causal TaH with the mlp, always or never decider), else on
the core generate with a one-line notice.
"""

from __future__ import annotations

import argparse
import os

from tah.cli.eval_args import add_eval_arguments, config_from_args
from tah.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_eval_arguments(parser)
    parser.add_argument(
        "--thresholds",
        default=None,
        help="comma list of τ: run a threshold sweep (same as `tah sweep`)",
    )
    g = parser.add_argument_group("routing baseline (--backend routing)")
    g.add_argument("--small", default=None, help="finished run of the small model")
    g.add_argument("--large", default=None, help="finished run of the large model")
    g.add_argument("--target-params", default=None, help="target average size, e.g. 1.7B")
    g.add_argument("--small-params", default=None, help="small model size (default: from its run)")
    g.add_argument("--large-params", default=None, help="large model size (default: from its run)")
    g.add_argument(
        "--route-score",
        choices=("auto", "entropy", "consistency", "length"),
        default="auto",
        help="offline difficulty score (see tah.evaluation.routing)",
    )


def _run_routing(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tah.evaluation.routing import combine_runs
    from tah.evaluation.summary import summary_table

    if not (args.small and args.large and args.target_params):
        raise ConfigError("--backend routing needs --small RUN, --large RUN and --target-params")
    output = args.output or os.path.join("eval_runs", args.name or "routing")
    summary = combine_runs(
        args.small,
        args.large,
        output,
        args.target_params,
        args.small_params,
        args.large_params,
        args.route_score,
        args.name,
    )
    r = summary["routing"]
    console = Console()
    console.print(summary_table(summary, title=summary["name"]))
    console.print(
        f"routed {100 * r['fraction']:.1f}% of questions to the large model "
        f"(score: {r['score']}); written to {output}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.backend == "routing":
        return _run_routing(args)
    if args.thresholds:
        from tah.cli.sweep import run_from_eval_args

        return run_from_eval_args(args)
    from rich.console import Console

    from tah.evaluation.runner import run_eval
    from tah.evaluation.summary import summary_table

    config = config_from_args(args)
    result = run_eval(config)
    console = Console()
    console.print(summary_table(result.summary, title=result.summary.get("name")))
    console.print(
        f"{result.generated} samples generated, {result.skipped} resumed; "
        f"results in {result.output}"
    )
    return 0
