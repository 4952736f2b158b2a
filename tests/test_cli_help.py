"""The command line documents itself: --version, a help text and a shown default per flag."""

from __future__ import annotations

import argparse

import pytest

from tah import __version__
from tah.cli import build_parser, main

# serve, demo and repro are documented by their own modules' owners and tests.
COMMANDS = ("label", "prune", "train", "eval", "report", "sweep", "generate")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"tah {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help_and_its_default_is_shown(command):
    sub = _subparsers(build_parser())[command]
    undocumented = [
        a.option_strings[0] for a in sub._actions if a.option_strings and not (a.help or "").strip()
    ]
    assert undocumented == []
    text = sub.format_help()
    for action in sub._actions:
        default = action.default
        if action.option_strings and not (
            default is None or default is False or default == [] or default is argparse.SUPPRESS
        ):
            assert "default" in sub.formatter_class(command)._get_help_string(action).lower(), (
                action.option_strings[0]
            )
    assert "(default: None)" not in text


def test_one_device_default():
    subs = _subparsers(build_parser())
    defaults = {
        name: next(a.default for a in subs[name]._actions if "--device" in a.option_strings)
        for name in ("label", "eval", "generate")
    }
    assert set(defaults.values()) == {"auto"}, defaults
