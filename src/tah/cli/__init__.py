"""The ``tah`` command: one subcommand per step of the workflow.

Each subcommand lives in its own module ``tah.cli.<name>`` exposing ``add_arguments(parser)``
and ``run(args) -> int``. Modules import heavy libraries (torch, transformers) inside ``run`` so
that ``tah --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from tah.errors import TaHError

# name -> (module, one-line help). The order is the order of the workflow.
COMMANDS: dict[str, tuple[str, str]] = {
    "label": ("tah.cli.label", "label hard tokens with a reference model"),
    "prune": ("tah.cli.prune", "remove the layers whose removal hurts perplexity least"),
    "train": ("tah.cli.train", "train a TaH model or a baseline from a YAML recipe"),
    "eval": ("tah.cli.eval", "evaluate models on math benchmarks"),
    "report": ("tah.cli.report", "put evaluation runs side by side"),
    "sweep": ("tah.cli.sweep", "accuracy and iteration share against the threshold"),
    "generate": ("tah.cli.generate", "generate text, coloured by iteration count"),
    "serve": ("tah.cli.serve", "OpenAI-compatible HTTP server"),
    "demo": ("tah.cli.demo", "solve sample word problems (5, or --count) with the bundled model"),
    "repro": ("tah.cli.repro", "reproduce the paper's pipeline at tiny scale"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default after its help, unless there is none to show (None, a bare
    switch) or the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = (
            default is None or default is False or default == [] or default is argparse.SUPPRESS
        )
        if nothing or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from tah import __version__

    parser = argparse.ArgumentParser(
        prog="tah", description="Think-at-Hard toolkit", formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tah {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="verbose logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        command_parser = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=args.debug)],
    )
    try:
        return int(args._run(args) or 0)
    except TaHError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or args.debug:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"error: no space left on the device{where}. Files are written to a temporary name "
            "and renamed, so finished results are intact; free some space and rerun the same "
            "command to continue",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
