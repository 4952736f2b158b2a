"""Settings of ``tah repro twohop``, fixed as data: the gate, the readout, every training
setting (:class:`TwoHopConfig`, ``--set key=value``), the presets and where each job lives.

Apart from the study (:mod:`tah.repro.twohop`) so that the jobs (:mod:`tah.repro.twohop.jobs`)
and the report read the settings without importing the study that runs them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tah.data.twohop import TwoHopTask
from tah.errors import ConfigError

BASE_JOBS = ("shallow", "base")  # from scratch, then trained on to convergence
# Standard models fine-tuned from the base: F steps (standard, wide, deep) or 2F (standard2x)
ARM_GATE_JOBS = ("standard", "standard2x", "wide", "deep")
GATE_JOBS = (*BASE_JOBS, *ARM_GATE_JOBS)
TAH_JOBS = ("tahplus", "alwaysthink")
BARE_SUFFIX = "_bare"
#: Format-fair controls (issue 23): these arms fine-tuned on bare rows only, the format TaH+'s
#: decider trains on; same base, problem stream, steps and lr as the mixed-format arm.
BARE_JOBS = tuple(f"{arm}{BARE_SUFFIX}" for arm in ("standard", "wide", "deep", "alwaysthink"))
DECIDER_READS = ("middle_last", "all")  # see runs.decider_layers

#: The gate, fixed before any TaH model is trained, so that the TaH arms cannot shape the test
#: of their own premise (the task must need depth that Standard lacks). Accuracies in points on
#: held-out test queries, every seed. History: the first version compared a 2x deeper model trained from
#: scratch with the shallow one; that deep model measured how long a model takes to learn its
#: first lookup (see the module docstring), so it now grows from the base like every arm.
GATE = {
    "metric": "two-hop query accuracy on the held-out test problems, per seed",
    # Precondition: the base does one lookup, or it is neither a converged starting model nor a
    # meaningful labeller. Checked on one-hop test accuracy (and used, on validation problems,
    # to decide whether the base trains another round).
    "base_one_hop_min": 90.0,
    # deep (the base at 2x depth, + F steps) beats standard (the base + F steps) by >= 20 points
    "deep_minus_standard_min": 20.0,
    # standard2x (base + 2F steps) differs from standard (base + F) by <= 5 points: the shallow
    # Standard is near its plateau. (Until the written-out base, this compared standard with the
    # base; a base taught another format for two-hop answers starts at 0 % on the bare format.)
    "more_steps_change_max": 5.0,
    # wide (base widened, + F steps) beats standard (+ F steps) by <= 5 points
    "wide_minus_standard_max": 5.0,
}

#: The readout, fixed before any TaH model is trained.
READOUT = {
    "primary_metric": "two-hop query accuracy (%) on the held-out test problems",
    "secondary": ["one-hop accuracy", "share of tokens iterating", "decider P/R/AUC"],
    "threshold_tau": 0.5,
    "tau_sweep": [0.1, 0.3, 0.5, 0.7, 0.9],
    "tau_sweep_use": "reported, never selected from",
    "seeds": [0, 1, 2],
    "aggregate": "mean ± std (sample std) over seeds",
    "tests": "exact two-sided McNemar per seed on paired two-hop test queries: TaH+ vs "
    "Standard, TaH+ vs wide Standard, TaH+ vs AlwaysThink",
    "tuning": "none on test problems; a validation split (other problems) is evaluated and "
    "reported for the decider",
}


@dataclass
class TwoHopConfig:
    """Every setting of the study (``--set key=value`` overrides; see ``--show-config``)."""

    preset: str = "full"
    task: dict[str, Any] = field(default_factory=lambda: TwoHopTask(separators=True).to_dict())
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    hidden: int = 64
    intermediate: int = 192
    heads: int = 4
    kv_heads: int = 2
    family: str = "qwen3"  # or "llama" (no per-head query/key norm)
    init_std: float = 0.02
    # Tied input/output embeddings (see Shape). Untied, a written-out base was still at chance
    # after 6000 steps where the tied one had learned every lookup by step 2000 (NOTES.md, 6).
    tie_embeddings: bool = True
    # The base learns two-hop queries written out (``gf x F(x) G(F(x))``, see TwoHopTask); every
    # arm is then fine-tuned and tested on the bare answer (``gf x G(F(x))``). Needs
    # task.separators. A base taught so guesses the intermediate F(x) at a bare two-hop answer.
    # (false: the bare-answer base of the earlier study, docs/repro-twohop/history/4layer-bare-base/)
    base_writes_intermediate: bool = True
    # 2 layers: one lookup, not two; the base grown to 4 does both (the gate, NOTES.md 9). The
    # earlier default, 4 (deep 8), composes once fine-tuned on the written/bare mix (NOTES.md 8).
    shallow_layers: int = 2
    deep_layers: int = 4  # the deep control: the base grown to this depth
    # S: written-out tied bases learned both lookups within 4000 + 1 or 2 rounds of 4000 steps
    # on seeds 0 and 2; seed 1 not in 20000 from its first init, and in 8000 after a restart
    # (NOTES.md, 6 and 7); the bare-answer base used 12000.
    base_steps: int = 4000
    base_round_steps: int = 4000  # E: one more round for a base not yet at the precondition
    base_max_rounds: int = 2  # R
    # A base still below the precondition after S + R rounds starts again from a fresh init and
    # problem stream, at most this many times. 2 was registered for 4-layer bases (NOTES.md 7);
    # 2-layer bases learned both lookups from 2 of 8 inits, seed 1 from none of 3, so 6
    # (registered before seed 1's attempts 3+, NOTES.md 10). More restarts never change a base
    # that passed, and a rerun with more continues one that did not.
    base_restarts: int = 6
    # A curriculum: the base's first S steps (``shallow``, and each restart's) see tables of at
    # most this many pairs, its rounds the task's own; None: the task's pairs throughout. Of 5
    # 2-layer inits that never learned both lookups without it, 3 did with it (probes judged
    # on validation, NOTES.md 11; registered before the run that used it).
    base_first_pairs: int | None = 4
    finetune_steps: int = 2000  # F
    # Share of every fine-tuning batch (all arms, TaH+'s stage 1; stage 2: decider_written_share)
    # drawn in the written-out format, the rest bare; tests stay bare. 0: bare only. Needs
    # base_writes_intermediate. Why: fine-tuned on bare answers only, Standard unlearns the F(x)
    # guess and never composes; on a mix it does (NOTES.md, section 8).
    finetune_written_share: float = 0.5
    decider_steps: int = 2000  # D (stage 2)
    batch: int = 32
    lr: float = 1e-3
    finetune_lr: float = 1e-3
    lora_r: int = 8
    decider_hidden: int = 32
    # Hidden states the decider reads: "middle_last" (layers L/2 and L) or "all". "all" with
    # decider_steps=2000 was chosen on validation problems (NOTES.md, section 6) and registered
    # as the default before the 3-seed run of section 7; the first registered run used
    # middle_last and 500 steps.
    decider_reads: str = "all"
    # The decider also reads the previous token's depth-1 states (TaHConfig.decider_previous_token;
    # not in the paper). In this task the operator that makes an answer two-hop (``gf``) sits one
    # position before the answer's argument. Chosen on validation problems in stage-2 probes and
    # registered before the run that used it (NOTES.md, sections 9 and 10).
    decider_previous_token: bool = True
    # Share of the decider's (stage 2) batches in the written-out format; None: as fine-tuning
    # (finetune_written_share). Written-out two-hop answers are not hard (the intermediate is
    # on the page), so trained on a mix the decider learns the format, not the difficulty; the
    # test format is bare (NOTES.md, section 9).
    decider_written_share: float | None = 0.0
    pos_weight: float = 1.0
    threshold: float = READOUT["threshold_tau"]
    tau_sweep: list[float] = field(default_factory=lambda: list(READOUT["tau_sweep"]))
    test_problems: int = 1000
    val_problems: int = 500
    curve_problems: int = 100  # validation problems of the gate runs' learning curves
    curve_every: int = 1000
    enforce_gate: bool = True
    # Also train the format-fair controls (BARE_JOBS) after the TaH arms. Adds arms only: the
    # other arms and their numbers are the same either way.
    bare_arms: bool = True
    workers: int = 2
    threads: int = 1

    def __post_init__(self) -> None:
        _ = self.base_task_spec  # validates the task and the base's format
        for name in ("base_steps", "base_round_steps", "finetune_steps", "decider_steps", "batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"twohop setting {name} must be >= 1")
        for name in ("base_max_rounds", "base_restarts"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"twohop setting {name} must be >= 0")
        if int(self.deep_layers) <= int(self.shallow_layers):
            raise ConfigError(
                f"twohop: deep_layers ({self.deep_layers}) must exceed shallow_layers "
                f"({self.shallow_layers})"
            )
        if not self.seeds:
            raise ConfigError("twohop: seeds is empty; give e.g. --seeds 0,1,2")
        if not 0.0 <= float(self.finetune_written_share) < 1.0:
            raise ConfigError(
                "twohop: finetune_written_share must be in [0, 1) (the arms are tested on bare "
                f"answers), got {self.finetune_written_share}"
            )
        if self.finetune_written_share and not self.base_writes_intermediate:
            raise ConfigError("twohop: finetune_written_share needs base_writes_intermediate=true")
        share = self.decider_written_share
        if share is not None and not 0.0 <= float(share) < 1.0:
            raise ConfigError(f"twohop: decider_written_share must be in [0, 1), got {share}")
        if share and not self.base_writes_intermediate:
            raise ConfigError("twohop: decider_written_share needs base_writes_intermediate=true")
        first = self.base_first_pairs
        if first is not None and int(first) < 2:
            raise ConfigError(
                f"twohop: base_first_pairs must be >= 2 (or null for no curriculum), got {first}"
            )
        if self.decider_reads not in DECIDER_READS:
            raise ConfigError(
                f"twohop: decider_reads must be one of {DECIDER_READS}, got {self.decider_reads!r}"
            )

    @property
    def task_spec(self) -> TwoHopTask:
        """The task every arm is fine-tuned and every model is tested on."""
        try:
            task = TwoHopTask(**self.task)
        except TypeError as exc:
            raise ConfigError(f"twohop task settings {self.task}: {exc}") from None
        if task.written_intermediate:
            raise ConfigError(
                "twohop: task.written_intermediate is the base's training format; set "
                "base_writes_intermediate=true instead"
            )
        return task

    @property
    def written_per_batch(self) -> int:
        """Problems per fine-tuning batch in the written-out format."""
        return round(float(self.finetune_written_share) * int(self.batch))

    @property
    def decider_written_per_batch(self) -> int:
        """Problems per decider-training (stage 2) batch in the written-out format."""
        share = self.decider_written_share
        if share is None:
            return self.written_per_batch
        return round(float(share) * int(self.batch))

    @property
    def base_task_spec(self) -> TwoHopTask:
        """The task the base (``shallow``, ``base``) trains on."""
        task = self.task_spec
        if not self.base_writes_intermediate:
            return task
        if not task.separators:
            raise ConfigError("twohop: base_writes_intermediate needs task.separators=true")
        return dataclasses.replace(task, written_intermediate=True)

    @property
    def base_first_task_spec(self) -> TwoHopTask:
        """The task of the base's first S steps (``base_first_pairs``; see there)."""
        task = self.base_task_spec
        if self.base_first_pairs is None:
            return task
        return dataclasses.replace(task, pairs=min(int(self.base_first_pairs), task.pairs))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TwoHopConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown twohop settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def with_overrides(self, items: list[str]) -> TwoHopConfig:
        data = self.to_dict()
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. base_steps=2000")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            if key.startswith("task."):
                data["task"] = {**data["task"], key[5:]: value}
            elif key not in data:
                raise ConfigError(f"--set {key}: unknown twohop setting; known: {sorted(data)}")
            else:
                data[key] = value
        return TwoHopConfig.from_dict(data)


def preset(name: str) -> TwoHopConfig:
    if name == "full":
        return TwoHopConfig()
    if name == "quick":  # a smoke test of every code path; its numbers mean nothing
        return TwoHopConfig(
            preset="quick",
            task=TwoHopTask(entities=8, pairs=4, queries=3, separators=True).to_dict(),
            seeds=[0],
            hidden=32,
            intermediate=64,
            shallow_layers=2,
            deep_layers=4,
            base_steps=12,
            base_round_steps=4,
            base_restarts=1,
            base_first_pairs=2,
            finetune_steps=8,
            decider_steps=6,
            batch=8,
            tau_sweep=[0.3, 0.7],
            test_problems=40,
            val_problems=20,
            curve_problems=10,
            curve_every=6,
            enforce_gate=False,
            workers=1,
        )
    raise ConfigError(f"unknown twohop preset {name!r}; use 'full' or 'quick'")


# ------------------------------------------------------------------ jobs
def job_dir(out: Path, seed: int, name: str) -> Path:
    return out / f"seed{seed}" / name


def mixed_arm(name: str) -> str:
    """The arm a job trains: ``standard`` for both ``standard`` and ``standard_bare``."""
    return name.removesuffix(BARE_SUFFIX)


#: Settings added after runs were first made, each with the value that reproduces how a run made
#: before it behaved (its saved config lacks the key; the new default would misdescribe it).
LEGACY_SETTINGS: dict[str, Any] = {
    "tie_embeddings": False,
    "base_writes_intermediate": False,
    "finetune_written_share": 0.0,
    "decider_reads": "middle_last",
    "decider_previous_token": False,
    "decider_written_share": None,
    "base_first_pairs": None,
    "bare_arms": False,
}


def read_saved_config(saved: dict[str, Any]) -> TwoHopConfig:
    """The settings of a run from its ``results.json`` ``config``, written by any version."""
    return TwoHopConfig.from_dict({**LEGACY_SETTINGS, **saved})


def study_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that change results (not the workers, the gate policy or the seeds: a run
    may add seeds later; nor the base's restarts: a finished base is unchanged by more, and one
    that missed the precondition continues with the next attempt; nor whether the bare-row
    arms run: they add arms and change none)."""
    ignored = ("workers", "threads", "enforce_gate", "seeds", "base_restarts", "bare_arms")
    settings = {k: v for k, v in config.items() if k not in ignored}
    settings["task"] = TwoHopTask(**config["task"]).to_dict()  # task fields added since: defaults
    return settings
