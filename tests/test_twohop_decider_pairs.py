"""`tah repro twohop --decider-pairs`: the bundled TaH+'s decider at other table sizes."""

from __future__ import annotations

import json

import torch

from tah.cli import main
from tah.data.twohop import TWO_HOP, TwoHopTask, sample_batch
from tah.repro.twohop.pairs import _forced_labels


def test_forced_labels_mark_exactly_the_tokens_before_two_hop_answers():
    task = TwoHopTask(entities=8, pairs=3, queries=4, separators=True)
    batch = sample_batch(task, 6, torch.Generator().manual_seed(1))
    iters = _forced_labels(task, batch.kinds, task.length)
    for row in range(6):
        for pos in range(task.length):
            expected = 1
            for q, answer_at in enumerate(task.answer_positions().tolist()):
                if pos == answer_at - 1 and int(batch.kinds[row, q]) == TWO_HOP:
                    expected = 2
            assert int(iters[row, pos]) == expected


def test_decider_pairs_smoke_on_the_bundled_model_and_a_retrained_decider(tmp_path, capsys):
    args = ["--quick", "--decider-pairs", "3,8", "--decider-train-mix", "2,3"]
    assert main(["repro", "twohop", *args, "--output", str(tmp_path)]) == 0
    original, retrained = json.loads((tmp_path / "decider-pairs.json").read_text())["runs"]
    assert [r["pairs"] for r in original["rows"]] == [3, 8]
    assert "| 8 |" in (tmp_path / "decider-pairs.md").read_text()
    for row in original["rows"]:
        decider = row["decider_at_answers"]
        assert 0.0 <= decider["recall"] <= 1.0
        # forcing the second pass where the answer is two-hop misses no more than the decider
        assert row["forced_on_two_hop"]["two_hop"] >= row["learned"]["two_hop"]
        assert row["two_hop_misses_not_fired"] <= row["two_hop_misses"]
    at_eight = original["rows"][1]
    # the size it was trained at: every two-hop answer routed and right (NOTES.md, section 11)
    assert at_eight["learned"]["two_hop"] == 1.0 and at_eight["decider_at_answers"]["recall"] == 1.0
    # the retrained decider (5 steps under --quick) beside it: only the decider moved
    assert retrained["steps"] == 5 and retrained["model"].endswith("model")
    meta = json.loads((tmp_path / "model" / "repro.json").read_text())
    assert meta["decider_retrained"]["pairs_mix"] == [2, 3]
    assert retrained["rows"][0]["forced_on_two_hop"] == original["rows"][0]["forced_on_two_hop"]
    assert retrained["rows"][0]["decider_at_answers"] != original["rows"][0]["decider_at_answers"]


def test_decider_pairs_bad_input_is_named(tmp_path, capsys):
    for args, message in (
        (["--decider-pairs", "two"], "comma list"),
        (["--decider-pairs", "1"], "out of range"),
        (["--decider-pairs", "3", "--decider-model", str(tmp_path)], "no repro.json"),
    ):
        assert main(["repro", "twohop", *args, "--output", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err
