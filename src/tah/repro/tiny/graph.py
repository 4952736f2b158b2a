"""The job graph of ``tah repro tiny``: every step of every seed as a :class:`~tah.repro.jobs.Job`.

Per seed (arrows are dependencies)::

    pretrain ─┬─ prune ─┬─ alwaysthink (pruned)                      unlabelled rows
              │         └─ tah_stage1 ── tah_stage2                  labelled rows
              ├─ standard ── label train/val/test ── rows ─┬─ tahplus_stage1 ── tahplus_stage2
              ├─ alwaysthink_plus                            │        └─ decider variants
              └─ (after tahplus_stage2) wide_base ── standard_wide

then ``tah eval`` of every row on the test problems, the routing rows (oracle with the labeller
as reference, depth 1 only), τ sweeps (test: reported; validation: the decider study), the
decider's precision / recall / AUC, and teacher-forced hard / easy token accuracy.
With ``labeller=base`` the labels come from the pretrained base instead of Standard.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tah.repro.jobs import Job
from tah.repro.tiny.config import ReproConfig
from tah.repro.tiny.decider_study import DEFAULT_VARIANT, evaluate_selected, scores_to_json
from tah.repro.tiny.methods import DATASET, METHODS, model_dir
from tah.repro.tiny.recipes import recipes_for_seed
from tah.repro.tiny.rows import write_labelled_rows
from tah.repro.tiny.token_accuracy import score_to_json
from tah.repro.widen import widen_to_match

__all__ = ["LabelsDone", "SeedGraph", "build_jobs", "labeller_dir"]


# ------------------------------------------------------------------ progress probes
def _train_progress(out_dir: Path, total: int):
    log_file = out_dir / "train_log.jsonl"

    def probe() -> tuple[float, float] | None:
        try:
            lines = log_file.read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "step" in record:
                return float(record["step"]), float(total)
        return None

    return probe


def _eval_progress(out_dir: Path, total: int):
    def probe() -> tuple[float, float] | None:
        shards = list((out_dir / "shards").glob("*.jsonl"))
        if not shards:
            return None
        done = 0
        for shard in shards:
            try:
                with open(shard, "rb") as handle:
                    done += sum(1 for _ in handle)
            except OSError:
                return None
        return float(done), float(total)

    return probe


class LabelsDone:
    """A ``done`` marker with ``exists()``: ``tah label`` marks completion in tah_labels.json."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        meta = self.path / "tah_labels.json"
        try:
            return bool(json.loads(meta.read_text(encoding="utf-8")).get("complete"))
        except (OSError, json.JSONDecodeError):
            return False


def labeller_dir(config: ReproConfig, out: Path, seed: int) -> Path:
    """The model whose mistakes define hard tokens (and the oracle's reference)."""
    sd = out / f"seed{seed}"
    if config.labeller == "base":
        return sd / "base" / "final"
    return sd / "standard" / "final"


def build_jobs(
    config: ReproConfig,
    out: Path,
    vocab: int,
    command: Callable[[list[str]], int] | None = None,
) -> list[Job]:
    """Every step of every seed (recipes are written to ``out/recipes``); the first seed's
    steps go first so that an interrupted run holds whole seeds. ``command`` is the ``tah``
    entry point, for the one step that picks its command line while it runs."""
    jobs: list[Job] = []
    for rank, seed in enumerate(config.seeds):
        graph = SeedGraph(config, out, seed, vocab, command)
        graph.models()
        graph.evaluations()
        graph.decider_study()
        graph.token_accuracy()
        for job in graph.jobs:
            job.priority = rank
            jobs.append(job)
    return jobs


class SeedGraph:
    """One seed's jobs, added phase by phase (each phase a method, in the order they run)."""

    def __init__(
        self, config: ReproConfig, out: Path, seed: int, vocab: int, command: Callable | None
    ) -> None:
        self.config, self.out, self.seed, self.command = config, out, seed, command
        self.data = out / DATASET
        self.sd = out / f"seed{seed}"
        self.logs = out / "logs" / f"seed{seed}"
        self.jobs: list[Job] = []
        self.recipes = recipes_for_seed(config, out, seed, vocab)
        self._write_recipes()
        self.base = str(self.sd / "base" / "final")
        self.labeller = str(labeller_dir(config, out, seed))
        self.labeller_step = "pretrain" if config.labeller == "base" else "standard"
        eval_args = [
            *("--temperature", "0", "--max-new-tokens", str(config.max_new_tokens)),
            *("--batch-size", str(config.eval_batch_size), "--device", "cpu"),
            *("--dtype", "float32", "--overwrite", "--no-progress"),
        ]
        self.test_args = ["--datasets", str(self.data / "test.jsonl"), *eval_args]
        self.val_args = ["--datasets", str(self.data / "validation.jsonl"), *eval_args]
        self.taus = ",".join(f"{t:g}" for t in config.sweep_thresholds)

    def name(self, step: str) -> str:
        return f"s{self.seed}/{step}"

    def _write_recipes(self) -> None:
        import yaml

        from tah.io import atomic_file

        for key, recipe in self.recipes.items():
            path = self.out / "recipes" / f"seed{self.seed}" / f"{key}.yaml"
            with atomic_file(path, "w", encoding="utf-8") as handle:
                yaml.safe_dump(recipe, handle, sort_keys=False)

    # ---------------------------------------------------------------- kinds of job
    def command_job(
        self, step: str, argv: list[str], deps: list[str], done: Any, cost: float, progress=None
    ) -> None:
        self._add(step, deps, done, cost, argv=argv, progress=progress)

    def call(
        self, step: str, func: Callable, kwargs: dict, deps: list[str], done: Path, cost: float
    ) -> None:
        self._add(step, deps, done, cost, call=(func, kwargs))

    def _add(self, step: str, deps: list[str], done: Any, cost: float, **what: Any) -> None:
        deps = [self.name(d) for d in deps]
        log = self.logs / f"{step}.log"
        self.jobs.append(Job(self.name(step), log, deps=deps, done=done, cost=cost, **what))

    def train(self, key: str, deps: list[str], cost: float) -> None:
        recipe = self.recipes[key]
        run_dir = Path(recipe["output"]["dir"])
        steps = int(recipe["train"]["max_steps"])
        path = self.out / "recipes" / f"seed{self.seed}" / f"{key}.yaml"
        argv = ["train", str(path), "--overwrite", "--no-progress"]
        progress = _train_progress(run_dir, steps)
        self.command_job(key, argv, deps, run_dir / "final", cost * steps, progress)

    def evaluate(
        self, key: str, model: str, label: str, deps: list[str], extra: list[str], cost=30.0
    ) -> None:
        run_dir = self.sd / "eval" / key
        argv = ["eval", "--model", model, "--output", str(run_dir), "--name", label, *extra]
        progress = _eval_progress(run_dir, self.config.n_test)
        self.command_job(
            f"eval_{key}", [*argv, *self.test_args], deps, run_dir / "summary.json", cost, progress
        )

    def sweep(self, step: str, model: str, sweep_dir: Path, label: str, split_args, dep) -> None:
        argv = ["sweep", "--model", model, "--thresholds", self.taus]
        argv += ["--output", str(sweep_dir), "--name", label, *split_args]
        cost = 30.0 * len(self.config.sweep_thresholds)
        self.command_job(step, argv, [dep], sweep_dir / "sweep.json", cost)

    # ---------------------------------------------------------------- the phases
    def models(self) -> None:
        """Pretraining, pruning, labelling and every training of the table's rows."""
        sd, config = self.sd, self.config
        self.train("pretrain", [], 1.0)
        prune = ["prune", "--model", self.base, "--output", str(sd / "pruned")]
        prune += ["--data", str(self.data / "calib.jsonl"), "--max-samples", str(config.n_calib)]
        prune += ["--think-token", "", "--batch-size", "32", "--overwrite", "--no-progress"]
        self.command_job("prune", prune, ["pretrain"], sd / "pruned" / "config.json", 20.0)
        self.train("standard", ["pretrain"], 1.0)
        self.train("alwaysthink", ["prune"], 1.8)
        self.train("alwaysthink_plus", ["pretrain"], 2.2)
        for split in ("train", "validation", "test"):
            labels = sd / "labels" / split
            argv = ["label", "--data", str(self.data / f"{split}.jsonl"), "--model", self.labeller]
            argv += ["--output", str(labels), "--think-token", "", "--batch-size", "64"]
            argv += ["--overwrite", "--no-progress"]
            done = LabelsDone(labels)
            self.command_job(f"label_{split}", argv, [self.labeller_step], done, 50.0)
        rows = {
            "labels_dir": str(sd / "labels" / "train"),
            "plain_rows": str(self.data / "ft_rows.jsonl"),
            "output": str(sd / "rows" / "train.jsonl"),
        }
        self.call("rows", write_labelled_rows, rows, ["label_train"], Path(rows["output"]), 5.0)
        self.train("tah_stage1", ["prune", "rows"], 1.2)
        self.train("tahplus_stage1", ["rows"], 1.5)
        self.train("tah_stage2", ["tah_stage1"], 0.5)
        self.train("tahplus_stage2", ["tahplus_stage1"], 0.5)
        for variant in config.decider_variants:
            self.train(f"decider_{variant}", ["tahplus_stage1"], 0.5)
        wide = {
            "base": self.base,
            "reference": str(sd / "tahplus_stage2" / "final"),
            "output": str(sd / "wide_base"),
            "seed": self.seed,
        }
        deps = ["pretrain", "tahplus_stage2"]
        self.call("wide_base", widen_to_match, wide, deps, sd / "wide_base" / "widen.json", 5.0)
        self.train("standard_wide", ["wide_base"], 1.3)

    def evaluations(self) -> None:
        """Every row on the test problems, the routing rows and the reported τ sweeps."""
        sd, out, seed = self.sd, self.out, self.seed
        self.evaluate("base", self.base, "Base", ["pretrain"], [])
        for method in METHODS:
            model = str(model_dir(out, seed, method))
            self.evaluate(method.key, model, method.label, [method.final_job], [])
        # the same TaH weights under other routing: oracle (the labeller's greedy token vs the
        # model's depth-1 token decides, docs/method.md "Labelling") and depth 1 alone
        for key, label in (("tah", "TaH"), ("tahplus", "TaH+")):
            final, stage2 = str(sd / f"{key}_stage2" / "final"), f"{key}_stage2"
            oracle = ["--backend", "oracle", "--reference", self.labeller]
            deps = [stage2, self.labeller_step]
            self.evaluate(f"{key}_oracle", final, f"{label} oracle", deps, oracle, cost=90.0)
            never = ["--decider", "never"]
            self.evaluate(f"{key}_depth1", final, f"{label} depth 1", [stage2], never)
        # test sweeps: reported beside the table, never selected from
        for key, label in (("tah", "TaH"), ("tahplus", "TaH+")):
            model = str(sd / f"{key}_stage2" / "final")
            sweep_dir = sd / "sweep" / key
            self.sweep(f"sweep_{key}", model, sweep_dir, label, self.test_args, f"{key}_stage2")

    def decider_study(self) -> None:
        """Validation sweeps of every decider, the validation-selected row, decider scores."""
        sd, config = self.sd, self.config
        deciders = {DEFAULT_VARIANT: ("tahplus_stage2", str(sd / "tahplus_stage2" / "final"))}
        for variant in config.decider_variants:
            deciders[variant] = (f"decider_{variant}", str(sd / f"decider_{variant}" / "final"))
        sweep_files = {}
        for variant, (job, model) in deciders.items():
            sweep_dir = sd / "validation" / "sweep" / variant
            sweep_files[variant] = str(sweep_dir / "sweep.json")
            label = f"TaH+ {variant}"
            self.sweep(f"valsweep_{variant}", model, sweep_dir, label, self.val_args, job)
            output = sd / "validation" / "decider" / f"{variant}.json"
            scores = self._scores(model, "validation", output)
            deps = [job, "label_validation"]
            self.call(f"decider_val_{variant}", scores_to_json, scores, deps, output, 10.0)
        selected = {
            "models": {v: m for v, (_, m) in deciders.items()},
            "sweep_files": sweep_files,
            "output": str(sd / "eval" / "tahplus_val"),
            "eval_args": ["--name", "TaH+ (validation-selected)", *self.test_args],
            "command": self.command,
        }
        done = sd / "eval" / "tahplus_val" / "selection.json"
        deps = [f"valsweep_{v}" for v in deciders]
        self.call("eval_tahplus_val", evaluate_selected, selected, deps, done, 30.0)
        # the decider of the reported TaH models on the test labels (read out, not tuned)
        for key in ("tah", "tahplus"):
            output = sd / "decider" / f"{key}.json"
            scores = self._scores(str(sd / f"{key}_stage2" / "final"), "test", output)
            deps = [f"{key}_stage2", "label_test"]
            self.call(f"decider_test_{key}", scores_to_json, scores, deps, output, 10.0)

    def _scores(self, model: str, split: str, output: Path) -> dict[str, Any]:
        return {
            "model_path": model,
            "labels_dir": str(self.sd / "labels" / split),
            "output": str(output),
            "limit": self.config.token_acc_limit,
        }

    def token_accuracy(self) -> None:
        """Teacher-forced next-token accuracy on hard / easy tokens of the labelled test split."""
        sd, out, seed = self.sd, self.out, self.seed
        token_runs: dict[str, tuple[str, str, dict[str, Any]]] = {
            m.key: (m.final_job, str(model_dir(out, seed, m)), {}) for m in METHODS
        }
        for key in ("tah", "tahplus"):
            stage1 = f"{key}_stage1"
            model = str(sd / stage1 / "final")
            token_runs[f"{key}_oracle"] = (stage1, model, {"oracle": True})
            token_runs[f"{key}_depth1"] = (stage1, model, {"decider": "never"})
        for key, (job, model, options) in token_runs.items():
            output = sd / "tokens" / f"{key}.json"
            kwargs = {**self._scores(model, "test", output), **options}
            self.call(f"tokens_{key}", score_to_json, kwargs, [job, "label_test"], output, 10.0)
