"""`tah repro tiny`: the quick preset end to end, plus its parts against independent references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tah.errors import ConfigError
from tah.repro.jobs import Job, JobFailed, run_jobs
from tah.repro.tiny.config import ReproConfig, preset
from tah.repro.tiny.report import collect_results, markdown_table
from tah.repro.tiny.token_accuracy import TokenAccuracy, count_hard_easy


# ------------------------------------------------------------------ the whole pipeline
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from tah.cli import main

    out = tmp_path_factory.mktemp("repro") / "run"
    assert main(["repro", "tiny", "--quick", "--output", str(out), "--no-progress"]) == 0
    return out


def test_quick_pipeline_writes_every_artefact(quick_run):
    out = quick_run
    for name in (
        "results.json",
        "results.md",
        "results.png",
        "accuracy_vs_iterating.png",
        "timings.json",
        "preregistration.json",
    ):
        assert (out / name).is_file(), name
    seed = out / "seed0"
    # real artefacts of every real step
    assert (seed / "base" / "final" / "config.json").is_file()
    for split in ("train", "validation", "test"):
        meta = json.loads((seed / "labels" / split / "tah_labels.json").read_text())
        assert meta["complete"]
        # labelled by the fine-tuned Standard model, not the pretrained base
        assert meta["reference_model"]["name_or_path"] == str(seed / "standard" / "final")
    pruned = json.loads((seed / "pruned" / "config.json").read_text())
    base = json.loads((seed / "base" / "final" / "config.json").read_text())
    assert pruned["num_hidden_layers"] == base["num_hidden_layers"] - 1
    for stage in (
        "standard",
        "standard_wide",
        "alwaysthink",
        "alwaysthink_plus",
        "tah_stage1",
        "tahplus_stage1",
    ):
        log = [json.loads(x) for x in (seed / stage / "train_log.jsonl").read_text().splitlines()]
        assert log[-1] == {"event": "end", "step": 12, "finished": True}, stage
    for ckpt in ("tah_stage2", "tahplus_stage2", "decider_pos_weight_5.4"):
        cfg = json.loads((seed / ckpt / "final" / "tah_config.json").read_text())
        assert cfg["decider"] == "mlp"
    for ckpt in ("alwaysthink", "alwaysthink_plus"):
        always = json.loads((seed / ckpt / "final" / "tah_config.json").read_text())
        assert always["decider"] == "always"
    plus = json.loads((seed / "alwaysthink_plus" / "final" / "config.json").read_text())
    assert plus["num_hidden_layers"] == base["num_hidden_layers"]  # unpruned


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_every_method_trains_on_standards_rows_and_order(quick_run):
    """Same rows, same order, steps, lr and batch for every fine-tuned row; the TaH rows carry
    the labeller's hard-token marks."""
    import yaml

    plain = _rows(quick_run / "synthetic" / "ft_rows.jsonl")
    labelled = _rows(quick_run / "seed0" / "rows" / "train.jsonl")
    assert [r["input_ids"] for r in plain] == [r["input_ids"] for r in labelled]
    assert [r["mask"] for r in plain] == [r["mask"] for r in labelled]
    assert any(any(r["mismatch"]) for r in labelled)
    recipes = quick_run / "recipes" / "seed0"
    plain_keys = ("standard", "standard_wide", "alwaysthink", "alwaysthink_plus")
    settings = set()
    for key in (*plain_keys, "tah_stage1", "tahplus_stage1"):
        recipe = yaml.safe_load((recipes / f"{key}.yaml").read_text())
        assert recipe["data"]["require_hard"] is False
        want = "ft_rows.jsonl" if key in plain_keys else "train.jsonl"
        assert recipe["data"]["train"].endswith(want)
        assert recipe["data"].get("query_iter", 1) == (2 if "alwaysthink" in key else 1)
        train, optim = recipe["train"], recipe["optim"]
        settings.add(
            (train["max_steps"], train["per_device_batch_size"], train["seed"], optim["lr"])
        )
    assert len(settings) == 1


def test_quick_results_are_consistent(quick_run):
    from tah.repro.stats import mcnemar_from_runs

    results = json.loads((quick_run / "results.json").read_text())
    methods = results["per_seed"]["0"]["methods"]
    # each method's numbers come from its own eval run and token file
    for key in ("standard", "standard_wide", "alwaysthink", "alwaysthink_plus", "tah", "tahplus"):
        summary = json.loads((quick_run / "seed0" / "eval" / key / "summary.json").read_text())
        assert methods[key]["accuracy"] == summary["datasets"]["synthetic"]["accuracy"]
        assert methods[key]["params"] == summary["backend_info"]["n_params"]
        assert 0.0 <= methods[key]["hard_acc"] <= 1.0
    # hard tokens are the labeller's (Standard's) mistakes: it scores 0 % on them, 100 % on easy
    assert methods["standard"]["hard_acc"] == 0.0 and methods["standard"]["easy_acc"] == 1.0
    assert methods["standard"]["avg_depth"] == 1.0
    assert methods["standard"]["iter_share"] == 0.0
    for key in ("alwaysthink", "alwaysthink_plus"):
        assert methods[key]["avg_depth"] == 2.0
        assert methods[key]["hard_iter_share"] == 1.0
    # oracle routing iterates exactly the hard tokens; depth 1 alone iterates nothing
    assert methods["tah_oracle"]["hard_iter_share"] == 1.0
    assert methods["tah_oracle"]["easy_iter_share"] == 0.0
    assert methods["tahplus_depth1"]["hard_iter_share"] == 0.0
    assert methods["tahplus_depth1"]["iter_share"] == 0.0
    assert methods["tahplus_oracle"]["accuracy"] is not None
    # parameter matching and the width control
    assert methods["tah"]["params"] < methods["tahplus"]["params"]
    assert methods["standard"]["params"] < methods["tahplus"]["params"]
    assert methods["standard_wide"]["params"] >= methods["tahplus"]["params"]
    # the threshold sweep really ran at each tau
    sweep = results["per_seed"]["0"]["sweep"]["tahplus"]
    assert sorted(sweep) == ["0.5", "0.9"]
    assert sweep["0.5"]["iter_share"] >= sweep["0.9"]["iter_share"]
    assert results["base_accuracy"]["mean"] is not None
    # decider scores on held-out labels
    for key in ("tah", "tahplus"):
        scores = results["per_seed"]["0"]["decider_test"][key]
        assert 0.0 <= scores["auc"] <= 1.0 and scores["tokens"] > 0
    # the validation choice is the best validation point, then scored on the test problems
    selection = results["per_seed"]["0"]["selection"]
    study = results["per_seed"]["0"]["decider_study"]
    best = max(p["accuracy"] for v in study.values() for p in v["validation_sweep"].values())
    assert selection["validation_accuracy"] == best
    assert methods["tahplus_val"]["accuracy"] is not None
    # the pre-registered readout, with McNemar counts recomputed from the samples
    readout = results["readout"]
    assert readout["preregistered"]["tau"] == results["config"]["threshold"]
    assert readout["preregistered"]["seeds"] == [0]

    def correct(key):
        rows = _rows(quick_run / "seed0" / "eval" / key / "samples.jsonl")
        return {r["problem_id"]: r["correct"] for r in rows}

    got = readout["paired_tests"]["tahplus vs standard"]["0"]
    assert got == mcnemar_from_runs(correct("tahplus"), correct("standard"))
    assert got["n"] == results["data"]["test"]
    table = (quick_run / "results.md").read_text()
    for text in (
        "| TaH+ |",
        "| AlwaysThink+ |",
        "| Standard-wide |",
        "Pre-registered",
        "oracle",
        "AUC",
        "never selected from",
    ):
        assert text in table, text


def test_rerun_resumes_without_recomputing(quick_run):
    from tah.cli import main

    before = (quick_run / "seed0" / "standard" / "final" / "model.safetensors").stat().st_mtime_ns
    prereg = (quick_run / "preregistration.json").stat().st_mtime_ns
    assert main(["repro", "tiny", "--quick", "--output", str(quick_run), "--no-progress"]) == 0
    after = (quick_run / "seed0" / "standard" / "final" / "model.safetensors").stat().st_mtime_ns
    assert before == after
    # the readout was fixed by the first invocation and is never rewritten
    assert (quick_run / "preregistration.json").stat().st_mtime_ns == prereg


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
    assert (
        main(["demo", "--model", str(dest), "--json", "--max-new-tokens", "8", "--count", "2"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert all(1 <= p["stats"]["tokens"] <= 8 for p in result["problems"])


def test_rerun_with_other_settings_is_refused(quick_run):
    from tah.repro.tiny.study import run_repro

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
    from tah.repro.tiny.token_accuracy import token_accuracy

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


def test_labeller_scores_zero_on_hard_and_full_on_easy(quick_run):
    """Hard tokens are the labeller's (Standard's) mistakes, so it must score 0 / 100 %."""
    from tah.repro.tiny.token_accuracy import token_accuracy

    res = token_accuracy(
        quick_run / "seed0" / "standard" / "final", quick_run / "seed0" / "labels" / "test"
    )
    assert res.hard > 0 and res.easy > 0
    assert res.hard_correct == 0
    assert res.easy_correct == res.easy


def test_wider_standard_computes_the_base_function_at_step_zero(quick_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from tah.repro.widen import widen_mlp

    base_dir = quick_run / "seed0" / "base" / "final"
    params = widen_mlp(base_dir, tmp_path / "wide", extra=24)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    wide = AutoModelForCausalLM.from_pretrained(tmp_path / "wide").eval()
    assert wide.config.intermediate_size == base.config.intermediate_size + 24
    n_base = sum(p.numel() for p in base.parameters())
    layers, hidden = base.config.num_hidden_layers, base.config.hidden_size
    assert params == n_base + 3 * hidden * 24 * layers
    ids = torch.randint(0, base.config.vocab_size, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(wide(ids).logits, base(ids).logits, rtol=1e-5, atol=1e-5)
    # and the new units are live: their input weights are not zero
    assert wide.model.layers[0].mlp.up_proj.weight[-24:].abs().sum() > 0


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
    from tah.repro.tiny.methods import METHODS

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
        Job("b", tmp_path / "b.log", call=(_touch, {"path": str(b)}), deps=["a"]),
        Job("a", tmp_path / "a.log", call=(_touch, {"path": str(a)}), done=a),
    ]
    results = run_jobs(jobs, workers=2, show_progress=False)
    assert a.exists() and b.exists() and not results["a"].skipped
    jobs[0].done = b
    again = run_jobs(jobs, workers=1, show_progress=False)
    assert again["a"].skipped and again["b"].skipped


def _append(path: str, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text + "\n")


def test_jobs_start_the_longest_chain_first(tmp_path):
    """A cheap step that unlocks an expensive one goes before a mid-cost leaf."""
    order = tmp_path / "order.txt"

    def job(name, cost, deps=()):
        return Job(
            name,
            tmp_path / f"{name}.log",
            call=(_append, {"path": str(order), "text": name}),
            deps=list(deps),
            cost=cost,
        )

    jobs = [job("leaf", 50.0), job("gate", 1.0), job("heavy", 100.0, ["gate"])]
    run_jobs(jobs, workers=1, show_progress=False)
    assert order.read_text().split() == ["gate", "heavy", "leaf"]
    # priority still comes first
    order.unlink()
    jobs[0].priority = -1
    run_jobs(jobs, workers=1, show_progress=False)
    assert order.read_text().split() == ["leaf", "gate", "heavy"]


def test_failed_job_stops_dependents_and_names_the_log(tmp_path):
    c = tmp_path / "c"
    jobs = [
        Job("bad", tmp_path / "bad.log", call=(_boom, {})),
        Job(
            "after",
            tmp_path / "after.log",
            call=(_touch, {"path": str(c)}),
            deps=["bad"],
        ),
        # two steps below the failure: dropped too, not mistaken for a dependency cycle
        Job("later", tmp_path / "later.log", call=(_touch, {"path": str(c)}), deps=["after"]),
    ]
    with pytest.raises(JobFailed, match="bad.log") as info:
        run_jobs(jobs, workers=1, show_progress=False)
    assert "deliberate failure" in str(info.value)
    assert not c.exists()


# ------------------------------------------------------------------ decider study and statistics
def test_auc_matches_pairwise_counting():
    from tah.repro.tiny.decider_study import auc

    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 6, n).astype(float)  # many ties
        positive = rng.integers(0, 2, n).astype(bool)
        pos, neg = scores[positive], scores[~positive]
        if not len(pos) or not len(neg):
            assert math.isnan(auc(scores, positive))
            continue
        want = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
        assert math.isclose(auc(scores, positive), want)


def test_mcnemar_is_the_exact_binomial_test():
    from tah.repro.stats import mcnemar, mcnemar_from_runs

    assert mcnemar(0, 5) == 2 / 32  # the 5 discordant pairs all one way
    # Thousands of discordant pairs (the two-hop study's): no float overflow; p underflows to 0.
    assert mcnemar(0, 1872) == 0.0 and 0 < mcnemar(900, 1100) < 1e-4
    assert mcnemar(3, 3) == 1.0 and mcnemar(0, 0) == 1.0
    # 18 vs 17 (the tie): p = 1
    assert mcnemar(18, 17) == 1.0
    for b, c in ((2, 9), (10, 25), (7, 1)):
        n, k = b + c, min(b, c)
        want = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
        assert math.isclose(mcnemar(b, c), want)
    first = {"a": True, "b": True, "c": False, "d": False, "e": True}
    second = {"a": True, "b": False, "c": True, "d": False, "x": True}
    got = mcnemar_from_runs(first, second)
    assert got["n"] == 4 and got["only_first"] == 1 and got["only_second"] == 1


def test_validation_choice_rule():
    from tah.repro.tiny.decider_study import select_on_validation

    def sweep(points):
        return {
            "points": [{"tau": t, "mean_accuracy": a, "mean_iter_share": 0.1} for t, a in points]
        }

    pick = select_on_validation(
        {"default": sweep([(0.5, 0.4), (0.9, 0.5)]), "wider": sweep([(0.5, 0.6), (0.9, 0.2)])}
    )
    assert (pick["decider"], pick["tau"]) == ("wider", 0.5)
    tie = select_on_validation(
        {"wider": sweep([(0.9, 0.5)]), "default": sweep([(0.5, 0.5), (0.8, 0.5)])}
    )
    assert (tie["decider"], tie["tau"]) == ("default", 0.8)  # default first, then larger tau


def test_base_labeller_option_labels_with_the_pretrained_base(tmp_path):
    from tah.repro.tiny.graph import build_jobs

    for labeller, model in (("base", "base"), ("standard", "standard")):
        config = preset("quick").with_overrides([f"labeller={labeller}"])
        jobs = {j.name: j for j in build_jobs(config, tmp_path, 100)}
        label = jobs["s0/label_train"]
        assert label.argv[label.argv.index("--model") + 1] == str(
            tmp_path / "seed0" / model / "final"
        )
        oracle = jobs["s0/eval_tahplus_oracle"].argv
        assert oracle[oracle.index("--reference") + 1] == str(tmp_path / "seed0" / model / "final")
    with pytest.raises(ConfigError, match="labeller"):
        preset("quick").with_overrides(["labeller=teacher"])


def test_alwaysthink_rows_iterate_prompt_tokens_too(tmp_path):
    """data.query_iter=2 (AlwaysThink's recipe) gives prompt positions 2 passes in training."""
    from tah.training.data import load_training_data

    row = {"data_id": 0, "input_ids": [5, 6, 7, 8], "mask": [0, 0, 1, 1], "mismatch": [0, 0, 0, 0]}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    for query_iter, want in ((1, [1, 1, 2, 2]), (2, [2, 2, 2, 2])):
        data = load_training_data(
            path,
            max_iter=2,
            strategy="all",
            max_length=16,
            require_hard=False,
            query_iter=query_iter,
        )
        assert data.examples([0])[0]["iter_labels"] == want


def test_external_program_jobs_log_their_output_and_fail_loudly(tmp_path):
    """run_external: a recipe's step that is its own program, its output in the job's log."""
    import sys

    from tah.repro.jobs import run_external

    ok = [sys.executable, "-c", "print('hello from the step')"]
    bad = [sys.executable, "-c", "import sys; print('about to fail'); sys.exit(3)"]
    jobs = [
        Job(
            "ok",
            tmp_path / "ok.log",
            call=(run_external, {"argv": ok, "log": str(tmp_path / "ok.log")}),
        ),
        Job(
            "bad",
            tmp_path / "bad.log",
            call=(run_external, {"argv": bad, "log": str(tmp_path / "bad.log")}),
        ),
    ]
    with pytest.raises(JobFailed, match="exited with code 3") as info:
        run_jobs(jobs, show_progress=False, in_process=True)
    assert "hello from the step" in (tmp_path / "ok.log").read_text()
    assert "about to fail" in str(info.value)  # the end of its log is quoted
