"""`tah repro tiny`: the quick preset end to end, plus its parts against independent references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tah.errors import ConfigError
from tah.repro.config import ReproConfig, preset
from tah.repro.jobs import Job, JobFailed, run_jobs
from tah.repro.report import collect_results, markdown_table
from tah.repro.token_accuracy import TokenAccuracy, count_hard_easy


# ------------------------------------------------------------------ the whole pipeline
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from tah.cli import main

    out = tmp_path_factory.mktemp("repro") / "run"
    assert main(["repro", "tiny", "--quick", "--output", str(out), "--no-progress"]) == 0
    return out


def test_quick_pipeline_writes_every_artefact(quick_run):
    out = quick_run
    for name in ("results.json", "results.md", "results.png", "timings.json"):
        assert (out / name).is_file(), name
    seed = out / "seed0"
    # real artefacts of every real step
    assert (seed / "base" / "final" / "config.json").is_file()
    for split in ("train", "test"):
        meta = json.loads((seed / "labels" / split / "tah_labels.json").read_text())
        assert meta["complete"]
    pruned = json.loads((seed / "pruned" / "config.json").read_text())
    base = json.loads((seed / "base" / "final" / "config.json").read_text())
    assert pruned["num_hidden_layers"] == base["num_hidden_layers"] - 1
    for stage in ("standard", "alwaysthink", "tah_stage1", "tahplus_stage1"):
        log = [json.loads(x) for x in (seed / stage / "train_log.jsonl").read_text().splitlines()]
        assert log[-1] == {"event": "end", "step": 12, "finished": True}, stage
    for ckpt in ("tah_stage2", "tahplus_stage2"):
        cfg = json.loads((seed / ckpt / "final" / "tah_config.json").read_text())
        assert cfg["decider"] == "mlp"
    always = json.loads((seed / "alwaysthink" / "final" / "tah_config.json").read_text())
    assert always["decider"] == "always"


def test_quick_results_are_consistent(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    methods = results["per_seed"]["0"]["methods"]
    # each method's numbers come from its own eval run and token file
    for key in ("standard", "alwaysthink", "tah", "tahplus"):
        summary = json.loads((quick_run / "seed0" / "eval" / key / "summary.json").read_text())
        assert methods[key]["accuracy"] == summary["datasets"]["synthetic"]["accuracy"]
        assert methods[key]["params"] == summary["backend_info"]["n_params"]
        assert 0.0 <= methods[key]["hard_acc"] <= 1.0
    assert methods["standard"]["avg_depth"] == 1.0
    assert methods["standard"]["iter_share"] == 0.0
    assert methods["alwaysthink"]["avg_depth"] == 2.0
    assert methods["alwaysthink"]["hard_iter_share"] == 1.0
    # oracle routing iterates exactly the hard tokens; depth 1 alone iterates nothing
    assert methods["tah_oracle"]["hard_iter_share"] == 1.0
    assert methods["tah_oracle"]["easy_iter_share"] == 0.0
    assert methods["tahplus_depth1"]["hard_iter_share"] == 0.0
    # parameter matching: the pruned TaH is smaller than TaH+, which is larger than Standard
    assert methods["tah"]["params"] < methods["tahplus"]["params"]
    assert methods["standard"]["params"] < methods["tahplus"]["params"]
    # the threshold sweep really ran at each tau, and one of its points is the main run's tau
    sweep = results["per_seed"]["0"]["sweep"]["tahplus"]
    assert sorted(sweep) == ["0.5", "0.9"]
    assert sweep["0.5"]["iter_share"] >= sweep["0.9"]["iter_share"]
    assert results["base_accuracy"]["mean"] is not None
    table = (quick_run / "results.md").read_text()
    assert "| TaH+ |" in table and "oracle" in table and "Decider threshold" in table


def test_rerun_resumes_without_recomputing(quick_run):
    from tah.cli import main

    before = (quick_run / "seed0" / "standard" / "final" / "model.safetensors").stat().st_mtime_ns
    assert main(["repro", "tiny", "--quick", "--output", str(quick_run), "--no-progress"]) == 0
    after = (quick_run / "seed0" / "standard" / "final" / "model.safetensors").stat().st_mtime_ns
    assert before == after


def test_export_and_demo_on_the_exported_checkpoint(quick_run, tmp_path, capsys):
    from tah import TaHForCausalLM
    from tah.cli import main
    from tah.repro.export import export_checkpoint

    dest = export_checkpoint(quick_run, 0, tmp_path / "tiny-tah")
    facts = json.loads((dest / "repro.json").read_text())
    assert facts["seed"] == 0 and facts["method"] == "TaH+" and facts["difficulty"] == [1]
    assert not (dest / "trainer_state.pt").exists()
    pruned = export_checkpoint(quick_run, 0, tmp_path / "tiny-tah-pruned", method="tah")
    assert json.loads((pruned / "repro.json").read_text())["method"] == "TaH"
    model = TaHForCausalLM.from_pretrained(dest)
    assert model.config.decider == "mlp" and model.tokenizer is not None
    assert main(["demo", "--model", str(dest), "--json", "--max-new-tokens", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 1 <= result["stats"]["tokens"] <= 8


def test_rerun_with_other_settings_is_refused(quick_run):
    from tah.repro.tiny import run_repro

    config = preset("quick").with_overrides(["finetune_steps=13"])
    with pytest.raises(ConfigError, match="finetune_steps"):
        run_repro(config, quick_run, show_progress=False)


# ------------------------------------------------------------------ token accuracy
def test_count_hard_easy_matches_a_loop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        ids = rng.integers(0, 5, n)
        mask = (np.arange(n) >= rng.integers(0, n)).astype(int)
        mismatch = rng.integers(0, 2, n)
        pred = rng.integers(0, 5, n)
        iters = rng.integers(1, 3, n)
        got = count_hard_easy(ids, mask, mismatch, pred, iters)
        want = TokenAccuracy()
        for i in range(n - 1):
            if mask[i] != 1:
                continue
            ok = pred[i] == ids[i + 1]
            if mismatch[i]:
                want.hard += 1
                want.hard_correct += int(ok)
                want.hard_iterated += int(iters[i] > 1)
            else:
                want.easy += 1
                want.easy_correct += int(ok)
                want.easy_iterated += int(iters[i] > 1)
            want.depth_sum += int(iters[i])
        assert got == want


def test_token_accuracy_of_plain_model_matches_hf_argmax(quick_run):
    """A plain checkpoint scored through the TaH forward equals the HF model's own argmax."""
    from transformers import AutoModelForCausalLM

    from tah.data.label_features import load_labels
    from tah.repro.token_accuracy import token_accuracy

    model_dir = quick_run / "seed0" / "standard" / "final"
    labels = quick_run / "seed0" / "labels" / "test"
    got = token_accuracy(model_dir, labels, batch_size=3)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    table, _ = load_labels(labels)
    want = TokenAccuracy()
    for row in table:
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            pred = hf(input_ids=ids).logits.argmax(-1)[0].numpy()
        n = ids.shape[1]
        want.add(
            count_hard_easy(
                np.asarray(row["input_ids"]),
                np.asarray(row["mask"]),
                np.asarray(row["mismatch"]),
                pred,
                np.ones(n, dtype=int),
            )
        )
    assert got == want
    assert got.hard + got.easy > 0


def test_base_model_scores_zero_on_hard_and_full_on_easy(quick_run):
    """Hard tokens are defined as the base's mistakes, so the base itself must score 0 / 100 %."""
    from tah.repro.token_accuracy import token_accuracy

    res = token_accuracy(
        quick_run / "seed0" / "base" / "final", quick_run / "seed0" / "labels" / "test"
    )
    assert res.hard > 0 and res.easy > 0
    assert res.hard_correct == 0
    assert res.easy_correct == res.easy


# ------------------------------------------------------------------ config and report
def test_config_overrides_and_errors():
    config = ReproConfig().with_overrides(["seeds=[3, 4]", "finetune_lr=2e-3", "threshold=0.7"])
    assert config.seeds == [3, 4] and config.finetune_lr == 2e-3 and config.threshold == 0.7
    with pytest.raises(ConfigError, match="finetune_stps"):
        ReproConfig().with_overrides(["finetune_stps=3"])
    with pytest.raises(ConfigError, match="positive"):
        ReproConfig().with_overrides(["pretrain_steps=0"])
    with pytest.raises(ConfigError, match="preset"):
        preset("huge")
    for bad, message in (
        ("seeds=[a, b]", "seeds must be integers"),
        ("seeds=[1, 1]", "distinct"),
        ("seeds=[]", "non-empty"),
        ("threshold=abc", "threshold must be a number"),
        ("sweep_thresholds=[0.5, 2]", r"\[0, 1\]"),
        ("difficulty=[x]", "difficulty must be a list of numbers"),
    ):
        with pytest.raises(ConfigError, match=message):
            ReproConfig().with_overrides([bad])


def test_cli_rejects_non_integer_seeds_before_running_anything(tmp_path, capsys):
    from tah.cli import main

    assert main(["repro", "tiny", "--seeds", "a,b", "--output", str(tmp_path / "r")]) != 0
    assert "seeds must be integers" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_report_mean_and_std(tmp_path):
    from tah.repro.tiny import METHODS

    config = ReproConfig(seeds=[0, 1, 2])
    accs = [0.5, 0.6, 0.8]
    for seed, acc in zip(config.seeds, accs):
        for method in METHODS:
            run = tmp_path / f"seed{seed}" / "eval" / method.key
            run.mkdir(parents=True)
            summary = {
                "datasets": {"synthetic": {"accuracy": acc, "avg_depth": 1.0, "iter_share": 0.0}},
                "backend_info": {"n_params": 1000},
            }
            (run / "summary.json").write_text(json.dumps(summary))
    results = collect_results(config, tmp_path, {"test": 3})
    stat = results["aggregate"]["tah"]["accuracy"]
    assert math.isclose(stat["mean"], float(np.mean(accs)))
    assert math.isclose(stat["std"], float(np.std(accs, ddof=1)))
    assert results["aggregate"]["tah"]["hard_acc"]["mean"] is None  # missing, not invented
    table = markdown_table(results)
    assert f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs, ddof=1):.1f}" in table


# ------------------------------------------------------------------ the job runner
def _touch(path: str, text: str = "") -> str:
    Path(path).write_text(text)
    return text


def _boom() -> None:
    raise RuntimeError("deliberate failure")


def test_jobs_respect_dependencies_and_resume(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    jobs = [
        Job("b", tmp_path / "b.log", call=(f"{__name__}:_touch", {"path": str(b)}), deps=["a"]),
        Job("a", tmp_path / "a.log", call=(f"{__name__}:_touch", {"path": str(a)}), done=a),
    ]
    results = run_jobs(jobs, workers=2, show_progress=False)
    assert a.exists() and b.exists() and not results["a"].skipped
    jobs[0].done = b
    again = run_jobs(jobs, workers=1, show_progress=False)
    assert again["a"].skipped and again["b"].skipped


def test_failed_job_stops_dependents_and_names_the_log(tmp_path):
    c = tmp_path / "c"
    jobs = [
        Job("bad", tmp_path / "bad.log", call=(f"{__name__}:_boom", {})),
        Job(
            "after",
            tmp_path / "after.log",
            call=(f"{__name__}:_touch", {"path": str(c)}),
            deps=["bad"],
        ),
    ]
    with pytest.raises(JobFailed, match="bad.log") as info:
        run_jobs(jobs, workers=1, show_progress=False)
    assert "deliberate failure" in str(info.value)
    assert not c.exists()
