"""The job graph of ``tah repro plateau``, in two phases per seed (arrows are dependencies).

Gate phase (Standard-family models only, scored on the validation problems)::

    pretrain ─┬─ standard          (finetune_steps)
              ├─ standard_2x       (plateau_factor x finetune_steps)
              ├─ deep_base ── deep (the base grown to deep_factor x layers, new layers = identity)
              └─ wide_base ── standard_wide (a wider MLP, >= TaH+'s parameters)

TaH phase (after the gate is recorded)::

    pretrain ─┬─ alwaysthink_plus
              └─ (standard) label train/val/test ── rows ── tahplus_stage1 ─┬─ tahplus_stage2
                                                                           └─ decider_previous_token

then ``tah eval`` of every arm on the test problems, TaH+ with oracle and depth-1 routing, τ
sweeps of both deciders (reported, never selected from) and the deciders' precision / recall /
AUC on the labelled test solutions. Every step is a ``tah`` command or a function of this
package, built on the tiny reproduction's graph (:class:`tah.repro.tiny.graph.SeedGraph`): the
same recipes, rows and commands, so a plateau arm differs from a tiny one only in its settings.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tah.repro.jobs import Job
from tah.repro.plateau.arms import ARMS, GATE_ARMS, arm_dir
from tah.repro.plateau.config import PlateauConfig
from tah.repro.tiny.decider_study import scores_to_json
from tah.repro.tiny.graph import LabelsDone, SeedGraph
from tah.repro.tiny.rows import write_labelled_rows

__all__ = ["gate_jobs", "tah_jobs", "widen_to_tahplus"]


def widen_to_tahplus(base: str, tah: dict[str, Any], output: str, seed: int) -> dict[str, Any]:
    """The width control, built before any TaH model exists: ``base`` widened to at least the
    parameters of an (untrained) TaH+ made from it with the ``tah`` settings (LoRA + decider;
    training does not change a parameter count)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tah.config import TaHConfig
    from tah.model.wrapper import TaHForCausalLM
    from tah.repro.widen import widen_to_count

    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tahplus = TaHForCausalLM.from_base(hf, TaHConfig(**tah))
    target = int(sum(p.numel() for p in tahplus.parameters()))
    return widen_to_count(base, target, output, seed, reference="TaH+ (untrained, same settings)")


def deepen_base(base: str, output: str, factor: int, placement: str) -> dict[str, Any]:
    """The depth control's starting point (a job step: imports stay inside)."""
    from tah.repro.deepen import deepen_checkpoint

    return deepen_checkpoint(base, output, factor=factor, placement=placement)


class PlateauSeedGraph(SeedGraph):
    """One seed's jobs: the tiny graph's building blocks, the plateau study's arms."""

    def __init__(
        self, config: PlateauConfig, out: Path, seed: int, vocab: int, command: Callable | None
    ) -> None:
        super().__init__(config, out, seed, vocab, command)
        standard = self.recipes["standard"]
        longer = copy.deepcopy(standard)
        longer["train"]["max_steps"] = config.plateau_factor * config.finetune_steps
        longer["output"]["dir"] = str(self.sd / "standard_2x")
        deep = copy.deepcopy(standard)
        deep["model"]["base"] = str(self.sd / "deep_base")
        deep["output"]["dir"] = str(self.sd / "deep")
        self.recipes.update(standard_2x=longer, deep=deep)
        self._write_recipes()
        self.val_dir = self.sd / "val"

    def validate_arm(self, key: str) -> None:
        arm = next(a for a in ARMS if a.key == key)
        run_dir = self.val_dir / key
        argv = ["eval", "--model", str(arm_dir(self.out, self.seed, arm)), "--output"]
        argv += [str(run_dir), "--name", arm.label, *self.val_args]
        self.command_job(f"val_{key}", argv, [arm.job], run_dir / "summary.json", 30.0)

    def gate_phase(self) -> None:
        config, sd = self.config, self.sd
        self.train("pretrain", [], 1.0)
        self.train("standard", ["pretrain"], 1.0)
        self.train("standard_2x", ["pretrain"], 1.0)
        grow = {
            "base": self.base,
            "output": str(sd / "deep_base"),
            "factor": config.deep_factor,
            "placement": config.deep_placement,
        }
        self.call("deep_base", deepen_base, grow, ["pretrain"], sd / "deep_base" / "deepen.json", 5)
        self.train("deep", ["deep_base"], 0.8 * config.deep_factor)
        tah = {**self.recipes["decider_previous_token"]["model"]["tah"]}
        tah.update(self.recipes["tahplus_stage1"]["model"]["tah"])
        wide = {"base": self.base, "tah": tah, "output": str(sd / "wide_base"), "seed": self.seed}
        done = sd / "wide_base" / "widen.json"
        self.call("wide_base", widen_to_tahplus, wide, ["pretrain"], done, 5.0)
        self.train("standard_wide", ["wide_base"], 1.3)
        for key in GATE_ARMS:
            self.validate_arm(key)

    def tah_phase(self) -> None:
        sd = self.sd
        self.train("alwaysthink_plus", [], 2.2)
        for split in ("train", "validation", "test"):
            labels = sd / "labels" / split
            argv = ["label", "--data", str(self.data / f"{split}.jsonl"), "--model", self.labeller]
            argv += ["--output", str(labels), "--think-token", "", "--batch-size", "64"]
            argv += ["--overwrite", "--no-progress"]
            self.command_job(f"label_{split}", argv, [], LabelsDone(labels), 50.0)
        rows = {
            "labels_dir": str(sd / "labels" / "train"),
            "plain_rows": str(self.data / "ft_rows.jsonl"),
            "output": str(sd / "rows" / "train.jsonl"),
        }
        self.call("rows", write_labelled_rows, rows, ["label_train"], Path(rows["output"]), 5.0)
        self.train("tahplus_stage1", ["rows"], 1.5)
        self.train("tahplus_stage2", ["tahplus_stage1"], 0.5)
        self.train("decider_previous_token", ["tahplus_stage1"], 0.5)
        for arm in ARMS:
            deps = [arm.job] if arm.job in _TAH_PHASE_TRAINING else []
            self.evaluate(arm.key, str(arm_dir(self.out, self.seed, arm)), arm.label, deps, [])
        final = str(sd / "tahplus_stage2" / "final")
        oracle = ["--backend", "oracle", "--reference", self.labeller]
        self.evaluate("tahplus_oracle", final, "TaH+ oracle", ["tahplus_stage2"], oracle, 90.0)
        never = ["--decider", "never"]
        self.evaluate("tahplus_depth1", final, "TaH+ depth 1", ["tahplus_stage2"], never)
        for arm in ARMS[-2:]:
            model = str(arm_dir(self.out, self.seed, arm))
            sweep_dir = sd / "sweep" / arm.key
            self.sweep(f"sweep_{arm.key}", model, sweep_dir, arm.label, self.test_args, arm.job)
            output = sd / "decider" / f"{arm.key}.json"
            scores = {
                "model_path": model,
                "labels_dir": str(sd / "labels" / "test"),
                "output": str(output),
                "limit": self.config.token_acc_limit,
            }
            deps = [arm.job, "label_test"]
            self.call(f"decider_test_{arm.key}", scores_to_json, scores, deps, output, 10.0)


_TAH_PHASE_TRAINING = {"alwaysthink_plus", "tahplus_stage2", "decider_previous_token"}


def _jobs(config: PlateauConfig, out: Path, vocab: int, command, phase: str) -> list[Job]:
    jobs: list[Job] = []
    for rank, seed in enumerate(config.seeds):
        graph = PlateauSeedGraph(config, out, seed, vocab, command)
        getattr(graph, f"{phase}_phase")()
        for job in graph.jobs:
            job.priority = rank
            jobs.append(job)
    return jobs


def gate_jobs(config: PlateauConfig, out: Path, vocab: int, command=None) -> list[Job]:
    """Every seed's gate phase (its jobs depend only on each other)."""
    return _jobs(config, out, vocab, command, "gate")


def tah_jobs(config: PlateauConfig, out: Path, vocab: int, command=None) -> list[Job]:
    """Every seed's TaH phase; run after the gate phase has finished (its models are inputs)."""
    return _jobs(config, out, vocab, command, "tah")
