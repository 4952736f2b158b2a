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
from pathlib import Path
from typing import Any

from tah.repro.jobs import Job
from tah.repro.tiny.config import ReproConfig
from tah.repro.tiny.decider_study import DEFAULT_VARIANT
from tah.repro.tiny.methods import DATASET, METHODS, model_dir
from tah.repro.tiny.recipes import recipes_for_seed

__all__ = ["build_jobs", "labeller_dir"]


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


class _LabelsDone:
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


def build_jobs(config: ReproConfig, out: Path, vocab: int) -> list[Job]:
    """Every step of every seed (recipes are written to ``out/recipes``); the first seed's
    steps go first so that an interrupted run holds whole seeds."""
    jobs: list[Job] = []
    for rank, seed in enumerate(config.seeds):
        for job in _seed_jobs(config, out, seed, vocab):
            job.priority = rank
            jobs.append(job)
    return jobs


def _seed_jobs(config: ReproConfig, out: Path, seed: int, vocab: int) -> list[Job]:
    import yaml

    from tah.io import atomic_file

    data = out / DATASET
    sd = out / f"seed{seed}"
    logs = out / "logs" / f"seed{seed}"
    seed_jobs: list[Job] = []
    add = seed_jobs.append

    def name(step: str, s: int = seed) -> str:
        return f"s{s}/{step}"

    recipes = recipes_for_seed(config, out, seed, vocab)
    for key, recipe in recipes.items():
        path = out / "recipes" / f"seed{seed}" / f"{key}.yaml"
        with atomic_file(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(recipe, handle, sort_keys=False)

    def train(key: str, deps: list[str], cost: float) -> None:
        recipe = recipes[key]
        run_dir = Path(recipe["output"]["dir"])
        steps = int(recipe["train"]["max_steps"])
        add(
            Job(
                name=name(key),
                log=logs / f"{key}.log",
                argv=[
                    "train",
                    str(out / "recipes" / f"seed{seed}" / f"{key}.yaml"),
                    "--overwrite",
                    "--no-progress",
                ],
                deps=deps,
                done=run_dir / "final",
                progress=_train_progress(run_dir, steps),
                cost=cost * steps,
            )
        )

    def call(
        step: str, target: str, kwargs: dict[str, Any], deps: list[str], done: Path, cost: float
    ) -> None:
        add(
            Job(
                name(step),
                logs / f"{step}.log",
                call=(target, kwargs),
                deps=deps,
                done=done,
                cost=cost,
            )
        )

    base = str(sd / "base" / "final")
    labeller = str(labeller_dir(config, out, seed))
    labeller_job = name("pretrain") if config.labeller == "base" else name("standard")
    train("pretrain", [], 1.0)
    add(
        Job(
            name=name("prune"),
            log=logs / "prune.log",
            argv=[
                "prune",
                "--model",
                base,
                "--output",
                str(sd / "pruned"),
                "--data",
                str(data / "calib.jsonl"),
                "--max-samples",
                str(config.n_calib),
                "--think-token",
                "",
                "--batch-size",
                "32",
                "--overwrite",
                "--no-progress",
            ],
            deps=[name("pretrain")],
            done=sd / "pruned" / "config.json",
            cost=20.0,
        )
    )
    train("standard", [name("pretrain")], 1.0)
    train("alwaysthink", [name("prune")], 1.8)
    train("alwaysthink_plus", [name("pretrain")], 2.2)
    for split in ("train", "validation", "test"):
        add(
            Job(
                name=name(f"label_{split}"),
                log=logs / f"label_{split}.log",
                argv=[
                    "label",
                    "--data",
                    str(data / f"{split}.jsonl"),
                    "--model",
                    labeller,
                    "--output",
                    str(sd / "labels" / split),
                    "--think-token",
                    "",
                    "--batch-size",
                    "64",
                    "--overwrite",
                    "--no-progress",
                ],
                deps=[labeller_job],
                done=_LabelsDone(sd / "labels" / split),  # type: ignore[arg-type]
                cost=50.0,
            )
        )
    call(
        "rows",
        "tah.repro.tiny.study:write_labelled_rows",
        {
            "labels_dir": str(sd / "labels" / "train"),
            "plain_rows": str(data / "ft_rows.jsonl"),
            "output": str(sd / "rows" / "train.jsonl"),
        },
        [name("label_train")],
        sd / "rows" / "train.jsonl",
        5.0,
    )
    train("tah_stage1", [name("prune"), name("rows")], 1.2)
    train("tahplus_stage1", [name("rows")], 1.5)
    train("tah_stage2", [name("tah_stage1")], 0.5)
    train("tahplus_stage2", [name("tahplus_stage1")], 0.5)
    for variant in config.decider_variants:
        train(f"decider_{variant}", [name("tahplus_stage1")], 0.5)
    call(
        "wide_base",
        "tah.repro.widen:widen_to_match",
        {
            "base": base,
            "reference": str(sd / "tahplus_stage2" / "final"),
            "output": str(sd / "wide_base"),
            "seed": seed,
        },
        [name("pretrain"), name("tahplus_stage2")],
        sd / "wide_base" / "widen.json",
        5.0,
    )
    train("standard_wide", [name("wide_base")], 1.3)

    eval_args = [
        "--temperature",
        "0",
        "--max-new-tokens",
        str(config.max_new_tokens),
        "--batch-size",
        str(config.eval_batch_size),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--overwrite",
        "--no-progress",
    ]
    test_args = ["--datasets", str(data / "test.jsonl"), *eval_args]
    val_args = ["--datasets", str(data / "validation.jsonl"), *eval_args]

    def evaluate(
        key: str, model: str, label: str, deps: list[str], extra: list[str], cost: float = 30.0
    ) -> None:
        run_dir = sd / "eval" / key
        add(
            Job(
                name=name(f"eval_{key}"),
                log=logs / f"eval_{key}.log",
                argv=[
                    "eval",
                    "--model",
                    model,
                    "--output",
                    str(run_dir),
                    "--name",
                    label,
                    *extra,
                    *test_args,
                ],
                deps=deps,
                done=run_dir / "summary.json",
                progress=_eval_progress(run_dir, config.n_test),
                cost=cost,
            )
        )

    evaluate("base", base, "Base", [name("pretrain")], [])
    for method in METHODS:
        evaluate(
            method.key,
            str(model_dir(out, seed, method)),
            method.label,
            [name(method.final_job)],
            [],
        )
    # the same TaH weights under other routing: oracle (the labeller's greedy token vs the
    # model's depth-1 token decides, METHOD A.10.4) and depth 1 alone
    for key, label in (("tah", "TaH"), ("tahplus", "TaH+")):
        final = str(sd / f"{key}_stage2" / "final")
        evaluate(
            f"{key}_oracle",
            final,
            f"{label} oracle",
            [name(f"{key}_stage2"), labeller_job],
            ["--backend", "oracle", "--reference", labeller],
            cost=90.0,
        )
        evaluate(
            f"{key}_depth1",
            final,
            f"{label} depth 1",
            [name(f"{key}_stage2")],
            ["--decider", "never"],
        )

    taus = ",".join(f"{t:g}" for t in config.sweep_thresholds)
    # test sweeps: reported beside the table, never selected from
    for key, label in (("tah", "TaH"), ("tahplus", "TaH+")):
        sweep_dir = sd / "sweep" / key
        add(
            Job(
                name=name(f"sweep_{key}"),
                log=logs / f"sweep_{key}.log",
                argv=[
                    "sweep",
                    "--model",
                    str(sd / f"{key}_stage2" / "final"),
                    "--thresholds",
                    taus,
                    "--output",
                    str(sweep_dir),
                    "--name",
                    label,
                    *test_args,
                ],
                deps=[name(f"{key}_stage2")],
                done=sweep_dir / "sweep.json",
                cost=30.0 * len(config.sweep_thresholds),
            )
        )
    # the decider study, on the validation split only
    deciders = {DEFAULT_VARIANT: ("tahplus_stage2", str(sd / "tahplus_stage2" / "final"))}
    for variant in config.decider_variants:
        deciders[variant] = (f"decider_{variant}", str(sd / f"decider_{variant}" / "final"))
    sweep_files = {}
    for variant, (job, model) in deciders.items():
        sweep_dir = sd / "validation" / "sweep" / variant
        sweep_files[variant] = str(sweep_dir / "sweep.json")
        add(
            Job(
                name=name(f"valsweep_{variant}"),
                log=logs / f"valsweep_{variant}.log",
                argv=[
                    "sweep",
                    "--model",
                    model,
                    "--thresholds",
                    taus,
                    "--output",
                    str(sweep_dir),
                    "--name",
                    f"TaH+ {variant}",
                    *val_args,
                ],
                deps=[name(job)],
                done=sweep_dir / "sweep.json",
                cost=30.0 * len(config.sweep_thresholds),
            )
        )
        call(
            f"decider_val_{variant}",
            "tah.repro.tiny.decider_study:scores_to_json",
            {
                "model_path": model,
                "labels_dir": str(sd / "labels" / "validation"),
                "output": str(sd / "validation" / "decider" / f"{variant}.json"),
                "limit": config.token_acc_limit,
            },
            [name(job), name("label_validation")],
            sd / "validation" / "decider" / f"{variant}.json",
            10.0,
        )
    call(
        "eval_tahplus_val",
        "tah.repro.tiny.decider_study:evaluate_selected",
        {
            "models": {v: m for v, (_, m) in deciders.items()},
            "sweep_files": sweep_files,
            "output": str(sd / "eval" / "tahplus_val"),
            "eval_args": ["--name", "TaH+ (validation-selected)", *test_args],
        },
        [name(f"valsweep_{v}") for v in deciders],
        sd / "eval" / "tahplus_val" / "selection.json",
        30.0,
    )
    # the decider of the reported TaH models on the test labels (read out, not tuned)
    for key in ("tah", "tahplus"):
        call(
            f"decider_test_{key}",
            "tah.repro.tiny.decider_study:scores_to_json",
            {
                "model_path": str(sd / f"{key}_stage2" / "final"),
                "labels_dir": str(sd / "labels" / "test"),
                "output": str(sd / "decider" / f"{key}.json"),
                "limit": config.token_acc_limit,
            },
            [name(f"{key}_stage2"), name("label_test")],
            sd / "decider" / f"{key}.json",
            10.0,
        )
    # teacher-forced next-token accuracy on hard / easy tokens of the labelled test split
    token_runs: dict[str, tuple[str, str, dict[str, Any]]] = {
        m.key: (m.final_job, str(model_dir(out, seed, m)), {}) for m in METHODS
    }
    for key in ("tah", "tahplus"):
        stage1 = f"{key}_stage1"
        token_runs[f"{key}_oracle"] = (stage1, str(sd / stage1 / "final"), {"oracle": True})
        token_runs[f"{key}_depth1"] = (stage1, str(sd / stage1 / "final"), {"decider": "never"})
    for key, (job, model, options) in token_runs.items():
        call(
            f"tokens_{key}",
            "tah.repro.tiny.token_accuracy:score_to_json",
            {
                "model_path": model,
                "labels_dir": str(sd / "labels" / "test"),
                "output": str(sd / "tokens" / f"{key}.json"),
                "limit": config.token_acc_limit,
                **options,
            },
            [name(job), name("label_test")],
            sd / "tokens" / f"{key}.json",
            10.0,
        )
    return seed_jobs
