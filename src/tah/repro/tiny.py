"""``tah repro tiny``: the paper's pipeline at laptop scale, from nothing, through the real commands.

Per seed (the synthetic data, tokenizer and test problems are shared by all seeds)::

    pretrain   tah train  (standard stage from a random Qwen3 config, on the pretraining split)
    label      tah label  (reference = the pretrained base; train split and test split)
    prune      tah prune  (drop the layer whose removal hurts calibration perplexity least)
    train      tah train  Standard (base) | AlwaysThink (pruned) | TaH stage 1 (pruned)
                          | TaH+ stage 1 (base), each the same steps, batch, data and schedule
    decider    tah train  stage 2 for TaH and TaH+ (decider only, backbone frozen)
    evaluate   tah eval   greedy answers on the held-out problems
               teacher-forced next-token accuracy on hard / easy tokens of the labelled test split
    report     mean ± std over seeds: Markdown, JSON and a plot

The reference model the paper uses is a stronger post-trained model of the same family. Here it
is the pretrained tiny base itself: its mistakes on solutions it has never seen are the tokens
that are hard *for this model*, which is what the oracle study in the paper measures.

Every step is a job (:mod:`tah.repro.jobs`) that runs ``tah <command> ...`` with the arguments
and recipes written into the run directory, so any step can be rerun by hand, and rerunning
the reproduction skips finished steps.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tah.io import write_json
from tah.repro.config import ReproConfig
from tah.repro.jobs import Job, JobResult, run_jobs
from tah.repro.recipes import recipes_for_seed

log = logging.getLogger(__name__)

__all__ = ["DATASET", "METHODS", "Method", "build_jobs", "model_dir", "prepare_data", "run_repro"]

DATASET = "synthetic"  # tah eval names a results dataset after the folder of test.jsonl


@dataclass(frozen=True)
class Method:
    """One row of the table: which checkpoint, evaluated how."""

    key: str
    label: str
    final_job: str  # the job whose output is the evaluated model
    description: str


METHODS: tuple[Method, ...] = (
    Method("standard", "Standard", "standard", "base, fine-tuned (one pass)"),
    Method("alwaysthink", "AlwaysThink", "alwaysthink", "pruned base + LoRA, every token 2 passes"),
    Method("tah", "TaH", "tah_stage2", "pruned base + LoRA + decider (parameter-matched)"),
    Method("tahplus", "TaH+", "tahplus_stage2", "base + LoRA + decider"),
)


# ------------------------------------------------------------------ shared inputs
def prepare_data(config: ReproConfig, out: Path) -> dict[str, Any]:
    """Task records, tokenizer and pretraining rows (once for all seeds; skipped when present).

    The pretraining split, the fine-tuning split and the test problems never share a problem.
    """
    from tah.data.encoding import encode_records
    from tah.data.records import load_records
    from tah.data.synthetic import generate_splits, write_jsonl
    from tah.data.tokenizer import build_task_tokenizer, load_tokenizer, save_tokenizer
    from tah.io import atomic_file

    data = out / DATASET
    marker = data / "data.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))
    n_pre = config.pretrain_steps * config.batch_size  # one epoch of fresh problems
    n_pre = min(max(n_pre, config.n_train), 4 * config.n_train)
    splits = generate_splits(
        n_pre + config.n_train, config.n_test, config.data_seed, list(config.difficulty)
    )
    pretrain, train = splits["train"][:n_pre], splits["train"][n_pre:]
    write_jsonl(pretrain, data / "pretrain.jsonl")
    write_jsonl(train, data / "train.jsonl")
    write_jsonl(train[: config.n_calib], data / "calib.jsonl")
    write_jsonl(splits["test"], data / "test.jsonl")
    save_tokenizer(build_task_tokenizer(seed=config.data_seed), out / "tokenizer")
    tokenizer = load_tokenizer(out / "tokenizer")
    records = load_records(str(data / "pretrain.jsonl")).records
    rows = encode_records(tokenizer, records, think_token=None)
    with atomic_file(data / "pretrain_rows.jsonl", "w", encoding="utf-8") as handle:
        for r in rows:  # unlabelled rows: the assistant span is supervised, nothing is "hard"
            n = len(r.input_ids)
            mask = [0] * r.span_start + [1] * (n - r.span_start)
            handle.write(
                json.dumps(
                    {
                        "data_id": r.data_id,
                        "input_ids": r.input_ids.tolist(),
                        "mask": mask,
                        "mismatch": [0] * n,
                    }
                )
                + "\n"
            )
    info = {
        "pretrain": len(pretrain),
        "train": len(train),
        "test": len(splits["test"]),
        "calib": config.n_calib,
        "vocab_size": len(tokenizer),
        "difficulty": list(config.difficulty),
    }
    write_json(marker, info)
    return info


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


# ------------------------------------------------------------------ the job graph
def _train_job(out: Path, seed: int, key: str, recipe: dict, deps: list[str], cost: float) -> Job:
    """``tah train <recipe>`` for one recipe of one seed."""
    run_dir = Path(recipe["output"]["dir"])
    steps = int(recipe["train"]["max_steps"])
    return Job(
        name=f"s{seed}/{key}",
        log=out / "logs" / f"seed{seed}" / f"{key}.log",
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


def model_dir(out: Path, seed: int, method: Method) -> Path:
    return out / f"seed{seed}" / method.final_job / "final"


def build_jobs(config: ReproConfig, out: Path, vocab: int) -> list[Job]:
    """Every step of every seed as a :class:`Job` (recipes are written to ``out/recipes``)."""
    import yaml

    from tah.io import atomic_file

    jobs: list[Job] = []
    data = out / DATASET
    for seed in config.seeds:
        sd = out / f"seed{seed}"
        logs = out / "logs" / f"seed{seed}"
        name = lambda step, s=seed: f"s{s}/{step}"  # noqa: E731
        recipes = recipes_for_seed(config, out, seed, vocab)
        for key, recipe in recipes.items():
            path = out / "recipes" / f"seed{seed}" / f"{key}.yaml"
            with atomic_file(path, "w", encoding="utf-8") as handle:
                yaml.safe_dump(recipe, handle, sort_keys=False)

        base = str(sd / "base" / "final")
        jobs.append(_train_job(out, seed, "pretrain", recipes["pretrain"], [], 1.0))
        for split in ("train", "test"):
            jobs.append(
                Job(
                    name=name(f"label_{split}"),
                    log=logs / f"label_{split}.log",
                    argv=[
                        "label",
                        "--data",
                        str(data / f"{split}.jsonl"),
                        "--model",
                        base,
                        "--output",
                        str(sd / "labels" / split),
                        "--think-token",
                        "",
                        "--batch-size",
                        "64",
                        "--overwrite",
                        "--no-progress",
                    ],
                    deps=[name("pretrain")],
                    done=sd / "labels" / split / "done.json",
                    cost=50.0,
                )
            )
        jobs.append(
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
        label_deps = [name("label_train")]
        jobs.append(_train_job(out, seed, "standard", recipes["standard"], label_deps, 1.0))
        jobs.append(
            _train_job(
                out, seed, "alwaysthink", recipes["alwaysthink"], [*label_deps, name("prune")], 1.6
            )
        )
        jobs.append(
            _train_job(
                out, seed, "tah_stage1", recipes["tah_stage1"], [*label_deps, name("prune")], 1.2
            )
        )
        jobs.append(
            _train_job(out, seed, "tahplus_stage1", recipes["tahplus_stage1"], label_deps, 1.5)
        )
        jobs.append(
            _train_job(out, seed, "tah_stage2", recipes["tah_stage2"], [name("tah_stage1")], 0.5)
        )
        jobs.append(
            _train_job(
                out,
                seed,
                "tahplus_stage2",
                recipes["tahplus_stage2"],
                [name("tahplus_stage1")],
                0.5,
            )
        )
        eval_args = [
            "--datasets",
            str(data / "test.jsonl"),
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
        # the pretrained base before any fine-tuning: where every method starts from
        jobs.append(
            Job(
                name=name("eval_base"),
                log=logs / "eval_base.log",
                argv=[
                    "eval",
                    "--model",
                    base,
                    "--output",
                    str(sd / "eval" / "base"),
                    "--name",
                    "Base",
                    *eval_args,
                ],
                deps=[name("pretrain")],
                done=sd / "eval" / "base" / "summary.json",
                progress=_eval_progress(sd / "eval" / "base", config.n_test),
                cost=30.0,
            )
        )
        if config.sweep_thresholds:
            taus = ",".join(f"{t:g}" for t in config.sweep_thresholds)
            for method in METHODS:
                if method.key not in ("tah", "tahplus"):
                    continue
                sweep_dir = sd / "sweep" / method.key
                jobs.append(
                    Job(
                        name=name(f"sweep_{method.key}"),
                        log=logs / f"sweep_{method.key}.log",
                        argv=[
                            "sweep",
                            "--model",
                            str(model_dir(out, seed, method)),
                            "--thresholds",
                            taus,
                            "--output",
                            str(sweep_dir),
                            "--name",
                            method.label,
                            *eval_args,
                        ],
                        deps=[name(method.final_job)],
                        done=sweep_dir / "sweep.json",
                        cost=30.0 * len(config.sweep_thresholds),
                    )
                )
        for method in METHODS:
            model = model_dir(out, seed, method)
            run_dir = sd / "eval" / method.key
            jobs.append(
                Job(
                    name=name(f"eval_{method.key}"),
                    log=logs / f"eval_{method.key}.log",
                    argv=[
                        "eval",
                        "--model",
                        str(model),
                        "--output",
                        str(run_dir),
                        "--name",
                        method.label,
                        *eval_args,
                    ],
                    deps=[name(method.final_job)],
                    done=run_dir / "summary.json",
                    progress=_eval_progress(run_dir, config.n_test),
                    cost=30.0,
                )
            )
            jobs.append(
                Job(
                    name=name(f"tokens_{method.key}"),
                    log=logs / f"tokens_{method.key}.log",
                    call=(
                        "tah.repro.token_accuracy:score_to_json",
                        {
                            "model_path": str(model),
                            "labels_dir": str(sd / "labels" / "test"),
                            "output": str(sd / "tokens" / f"{method.key}.json"),
                            "limit": config.token_acc_limit,
                        },
                    ),
                    deps=[name(method.final_job), name("label_test")],
                    done=sd / "tokens" / f"{method.key}.json",
                    cost=10.0,
                )
            )
        # Diagnostics of the stage-1 models: oracle routing (the paper's oracle) and depth 1
        # alone (what the second pass adds on top of the backbone it was trained with).
        for key, stage1 in (("tah", "tah_stage1"), ("tahplus", "tahplus_stage1")):
            for variant, options in (
                ("oracle", {"oracle": True}),
                ("depth1", {"decider": "never"}),
            ):
                jobs.append(
                    Job(
                        name=name(f"tokens_{key}_{variant}"),
                        log=logs / f"tokens_{key}_{variant}.log",
                        call=(
                            "tah.repro.token_accuracy:score_to_json",
                            {
                                "model_path": str(sd / stage1 / "final"),
                                "labels_dir": str(sd / "labels" / "test"),
                                "output": str(sd / "tokens" / f"{key}_{variant}.json"),
                                "limit": config.token_acc_limit,
                                **options,
                            },
                        ),
                        deps=[name(stage1), name("label_test")],
                        done=sd / "tokens" / f"{key}_{variant}.json",
                        cost=10.0,
                    )
                )
    _fix_label_markers(jobs)
    return jobs


def _fix_label_markers(jobs: list[Job]) -> None:
    """``tah label`` marks completion inside tah_labels.json; test that instead of a file."""
    for job in jobs:
        if job.argv and job.argv[0] == "label":
            job.done = _LabelsDone(Path(job.argv[job.argv.index("--output") + 1]))


class _LabelsDone:
    """A ``done`` marker with ``exists()``: the labels directory says it is complete."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        meta = self.path / "tah_labels.json"
        try:
            return bool(json.loads(meta.read_text(encoding="utf-8")).get("complete"))
        except (OSError, json.JSONDecodeError):
            return False


# ------------------------------------------------------------------ the whole run
def run_repro(
    config: ReproConfig, out: str | Path, *, show_progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) the reproduction into ``out``; returns the aggregated results."""
    from tah.repro.report import collect_results, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.validate()
    saved = out / "repro_config.json"
    if saved.is_file():
        previous = json.loads(saved.read_text(encoding="utf-8"))
        differ = sorted(
            k
            for k in previous
            if k not in ("seeds", "workers", "threads")
            and previous.get(k) != config.to_dict().get(k)
        )
        if differ:
            from tah.errors import ConfigError

            raise ConfigError(
                f"{out} holds a reproduction made with other settings ({', '.join(differ)}); "
                "choose another --output or delete it"
            )
    write_json(saved, config.to_dict())
    started = time.perf_counter()
    info = prepare_data(config, out)
    jobs = build_jobs(config, out, info["vocab_size"])
    timings_path = out / "timings.json"
    timings: dict[str, Any] = (
        json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    )

    def record(result: JobResult) -> None:
        if not result.skipped:
            timings[result.name] = {"wall_s": result.wall_s, "cpu_s": result.cpu_s}
            write_json(timings_path, timings)

    run_jobs(
        jobs,
        workers=config.workers,
        threads=config.threads,
        show_progress=show_progress,
        on_finish=record,
    )
    results = collect_results(config, out, info)
    results["wall_time_s_this_invocation"] = time.perf_counter() - started
    results["timings"] = timings
    write_report(results, out)
    return results
