"""What ``tah repro`` prints (issue 26 item 8): plural workers, a failed gate under --quick
explained, and no transformers progress bars with --no-progress. The study itself is
replaced by a stub that records the state it ran in."""

from __future__ import annotations

import pytest
from transformers.utils import logging as hf_logging

from tah.cli import main


@pytest.fixture
def stub_study(monkeypatch):
    seen: dict = {}

    def run_study(config, output, show_progress=True):
        seen["bars"] = hf_logging.is_progress_bar_enabled()
        seen["show_progress"] = show_progress
        two_hop = {"two_hop": {"mean": 2.1, "std": 0.0}}
        return {
            "config": {"shallow_layers": 2},
            "gate": {"passed": False},
            "aggregate": {"tahplus": two_hop, "standard_bare": two_hop, "deep": two_hop},
            "wall_time_s_this_invocation": 1.0,
        }

    monkeypatch.setattr("tah.repro.twohop.study.run_study", run_study)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    shown = hf_logging.is_progress_bar_enabled()
    yield seen
    (hf_logging.enable_progress_bar if shown else hf_logging.disable_progress_bar)()


def test_quick_twohop_output(stub_study, capsys, tmp_path):
    import os

    code = main(["repro", "twohop", "--quick", "--no-progress", "--output", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "1 worker x" in out and "1 workers" not in out, out
    assert "gate FAILED" in out and "expected with --quick" in out, out
    # arms by the report's names, not the job names
    assert "TaH+ (2L" in out and "Standard (2L, bare rows)" in out, out
    assert "tahplus" not in out and "standard_bare" not in out, out
    assert "  deep " in out  # an arm without a report name keeps its own
    assert stub_study == {"bars": False, "show_progress": False}
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # for the worker processes


def test_progress_stays_without_no_progress(stub_study, capsys, tmp_path):
    hf_logging.enable_progress_bar()
    assert main(["repro", "twohop", "--quick", "--output", str(tmp_path)]) == 0
    assert stub_study["bars"] is True
