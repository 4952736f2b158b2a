"""``tah repro twohop``: a depth-bound task where extra depth on a few tokens should matter.

The task (:mod:`tah.data.twohop`): two shuffled lookup tables and queries that need one lookup
(``f x``, ``g y``) or two (``gf x``, about a third). A lookup takes at least two attention layers,
so two lookups in a row take more depth than one. Measured (``docs/repro-twohop/NOTES.md``,
sections 8 to 10): with a base that writes the intermediate out and fine-tuning on a mix of
written and bare answers, a 2-layer Standard does one lookup and not two (two-hop near the
query-blind 12.5 %), while the same base grown to 4 layers does both; 3 and 4 layers already
compose. So the default base has 2 layers and the deeper Standard control 4 (``shallow_layers``
/ ``deep_layers``). A 2-layer base often never learns a lookup on tables of 8 pairs (2 of 12
initialisations did, sections 9 and 10), so its first steps see tables of 4 pairs
(``base_first_pairs``; 5 of 8 inits then passed, section 11), with up to ``base_restarts``
fresh initialisations.

Order of the study, per seed (seeds 0, 1, 2):

1. **Base** (Standard only): ``shallow`` is trained from scratch for S steps; ``base`` is that
   model, trained on in rounds of E steps (a fresh warmup + cosine each) while its one-hop
   accuracy on *validation* problems stays under the gate's precondition, at most R rounds
   ("trained to convergence", judged on validation only); a base still under it starts again
   from a fresh initialisation (at most ``base_restarts`` times). The base is the starting model
   of every arm and the labeller (hard token = answer it gets wrong).
2. **Gate** (Standard models only, on one problem stream, F steps each from the base):
   ``standard`` (the base trained on), ``wide`` (a wider MLP, the same function at start and >=
   TaH+'s parameters) and ``deep`` (the base followed by a copy of its own layers whose output
   projections start at zero: the same function at start, twice the depth). The gate
   (:data:`GATE`) must hold on every seed before any TaH model is trained; the verdict is written
   into ``results.json`` first. ``standard`` and ``wide`` double as the Standard arms of step 4
   (they are not TaH models, and reusing them keeps the study within a CPU budget).
3. **Readout, fixed in advance** (:data:`READOUT`): written into ``results.json`` before the
   first TaH job starts.
4. **TaH arms, fine-tuned from the base** for F steps on the same problem stream as
   ``standard``, ``wide`` and ``deep``: TaH+ (stage 1: backbone + LoRA under oracle routing;
   stage 2: the decider alone, D steps) and AlwaysThink (every token runs depth 2, in training
   and at test).
5. **Format-fair controls** (``bare_arms``, issue 23; registered in NOTES.md section 12):
   ``standard_bare``, ``wide_bare``, ``deep_bare`` and ``alwaysthink_bare``, the same arms
   fine-tuned on bare rows only, the format TaH+'s decider trains on (the arms above train on
   the written/bare mix). They run in step 4's phase and change no other arm. The report puts
   every arm's cost per token beside its accuracy (:mod:`tah.repro.twohop.cost`).

Why the deep control grows from the base instead of training from scratch: from scratch, how
many steps a model takes to learn its first lookup varies from seed to seed and grows with depth
(an 8-layer model was still at chance on one-hop queries after 6000 of 12000 steps, where the
4-layer ones had learned both lookups), so a from-scratch deep model measures that plateau, not
what depth buys. Grown from the base, it gets exactly what TaH gets: the trained base, more
depth for the answer, and F steps.

The base writes the intermediate out (the default; ``--set base_writes_intermediate=false`` for
the earlier bare-answer base): it learns two-hop queries as ``gf x F(x) G(F(x))``, the way a
model that writes its reasoning answers, while every arm is fine-tuned and every model tested on
the bare answer ``gf x G(F(x))``. Such a base guesses F(x) at a bare two-hop answer, the useful
first guess TaH's second pass needs (a bare-answer base never emits F(x) there). Its two-hop
accuracy on the bare format is 0 % by construction, so the gate's plateau rule compares Standard
after F and after 2F steps (``standard2x``), not Standard with the base.

Every job writes ``result.json`` when it finishes, so a rerun skips finished jobs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tah.errors import ConfigError
from tah.io import write_json
from tah.repro.jobs import utc_timestamp
from tah.repro.twohop.config import (
    ARM_GATE_JOBS,
    BARE_JOBS,
    BASE_JOBS,
    GATE,
    GATE_JOBS,
    READOUT,
    TAH_JOBS,
    TwoHopConfig,
    job_dir,
    preset,
    read_saved_config,
    study_settings,
)

__all__ = ["GATE", "READOUT", "TwoHopConfig", "check_gate", "job_dir", "preset", "run_study"]


def _progress_reader(path: Path):
    def read() -> tuple[float, float] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return float(data["done"]), float(data["total"])

    return read


def _jobs(config: TwoHopConfig, out: Path, names: tuple[str, ...]) -> list:
    """The jobs of one phase; dependencies only within the phase (phases run in order)."""
    from tah.repro.jobs import Job
    from tah.repro.twohop.jobs import run_job

    # Ready jobs start largest cost first.
    cost = {
        "shallow": 9.0,
        "base": 3.0,
        "tahplus": 3.0,
        "alwaysthink": 2.5,
        "deep": 2.0,
        "standard2x": 2.0,
        "alwaysthink_bare": 2.5,
        "deep_bare": 2.0,
    }
    jobs = []
    for seed in config.seeds:
        for name in names:
            where = job_dir(out, seed, name)
            deps = [f"seed{seed}/shallow"] if name == "base" and "shallow" in names else []
            jobs.append(
                Job(
                    name=f"seed{seed}/{name}",
                    log=where / "log.txt",
                    call=(
                        run_job,
                        {"config": config.to_dict(), "out": str(out), "seed": seed, "name": name},
                    ),
                    deps=deps,
                    done=where / "result.json",
                    progress=_progress_reader(where / "progress.json"),
                    cost=cost.get(name, 1.3),
                )
            )
    return jobs


def _load_results(out: Path, config: TwoHopConfig, names: tuple[str, ...]) -> dict[int, dict]:
    results: dict[int, dict] = {}
    for seed in config.seeds:
        for name in names:
            path = job_dir(out, seed, name) / "result.json"
            if path.is_file():
                results.setdefault(seed, {})[name] = json.loads(path.read_text(encoding="utf-8"))
    return results


def _seed_checks(acc: dict[str, float | None], one: dict[str, float | None]) -> dict:
    """One seed's gate checks; None where a run it needs did not run."""
    have = {name for name, value in acc.items() if value is not None}

    def check(needs: set[str], ok) -> bool | None:
        return bool(ok()) if needs <= have else None

    return {
        "base_does_one_hop": check({"base"}, lambda: one["base"] >= GATE["base_one_hop_min"]),
        "deep_beats_standard": check(
            {"deep", "standard"},
            lambda: acc["deep"] - acc["standard"] >= GATE["deep_minus_standard_min"],
        ),
        "standard_near_plateau": check(
            {"standard", "standard2x"},
            lambda: abs(acc["standard2x"] - acc["standard"]) <= GATE["more_steps_change_max"],
        ),
        "wide_no_better": check(
            {"standard", "wide"},
            lambda: acc["wide"] - acc["standard"] <= GATE["wide_minus_standard_max"],
        ),
    }


def check_gate(gate_results: dict[int, dict]) -> dict[str, Any]:
    """The gate verdict from the Standard runs (points of test accuracy)."""
    per_seed, passed = {}, True

    def get(runs: dict, name: str, kind: str) -> float | None:
        return 100 * runs[name]["test"]["accuracy"][kind] if name in runs else None

    for seed, runs in sorted(gate_results.items()):
        acc = {name: get(runs, name, "gf") for name in GATE_JOBS}
        one = {name: get(runs, name, "one_hop") for name in GATE_JOBS}
        checks = _seed_checks(acc, one)
        passed &= all(v is True for v in checks.values())
        per_seed[seed] = {"two_hop": acc, "one_hop": one, "checks": checks}
    return {"rules": GATE, "per_seed": per_seed, "passed": bool(passed and per_seed)}


def run_study(config: TwoHopConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the whole study; write results.json/.md/.png into ``out``."""
    from tah.repro.twohop.report import write_report
    from tah.repro.twohop.results import collect

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    state_path = out / "results.json"
    previous = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if previous.get("config") and study_settings(
        read_saved_config(previous["config"]).to_dict()
    ) != study_settings(config.to_dict()):
        raise ConfigError(
            f"{out} holds a run with other settings; use another --output or the same settings "
            "(see results.json 'config')"
        )
    state: dict[str, Any] = {"config": config.to_dict(), "task": config.task_spec.to_dict()}
    state["timings"] = previous.get("timings", {})

    def finished(result) -> None:
        if not result.skipped:
            state["timings"][result.name] = {"wall_s": result.wall_s, "cpu_s": result.cpu_s}

    from tah.repro.twohop.jobs import reopen_failed_bases

    # A base that missed the precondition continues if more restarts are allowed now.
    state["bases_reopened"] = previous.get("bases_reopened", []) + [
        {"seed": seed, "base_restarts": config.base_restarts, "at": utc_timestamp()}
        for seed in reopen_failed_bases(out, config)
    ]
    _run(_jobs(config, out, BASE_JOBS), config, show_progress, finished)
    bases = check_gate(_load_results(out, config, BASE_JOBS))
    bases_ok = all(row["checks"]["base_does_one_hop"] for row in bases["per_seed"].values())
    if bases_ok or not config.enforce_gate:
        _run(_jobs(config, out, ARM_GATE_JOBS), config, show_progress, finished)
    gate = check_gate(_load_results(out, config, GATE_JOBS))
    gate["enforced"] = config.enforce_gate
    # A rerun over the same finished jobs reaches the same verdict: it keeps the time it was
    # first recorded (the report says the gate came before the TaH models; it did).
    earlier = previous.get("gate") or {}
    same = {k: v for k, v in earlier.items() if k != "recorded_at"} == json.loads(json.dumps(gate))
    gate["recorded_at"] = earlier["recorded_at"] if same else utc_timestamp()
    # Every new verdict stays on record (a run may add seeds later: --seeds 0, then 0,1,2).
    history = previous.get("gate_history", [])
    if not same:
        history.append({"seeds": config.seeds, "passed": gate["passed"], "at": gate["recorded_at"]})
    state["gate"], state["gate_history"] = gate, history
    proceed = gate["passed"] or not config.enforce_gate
    # The readout is registered once, the first time the study reaches this point, and kept.
    state["readout"] = previous.get("readout") or {**READOUT, "registered_at": utc_timestamp()}
    state["readout"]["threshold_tau"] = config.threshold
    write_json(state_path, state)  # gate and readout on disk before any TaH job starts
    if proceed:
        _run(_jobs(config, out, _tah_phase(config)), config, show_progress, finished)
    else:
        state["stopped"] = (
            "the gate failed: no TaH model was trained. Change the task (Standard runs only) "
            "or rerun with --set enforce_gate=false to train the TaH arms anyway (labelled)."
        )
    state["wall_time_s_this_invocation"] = time.perf_counter() - started
    results = collect(
        state,
        _load_results(out, config, (*GATE_JOBS, *TAH_JOBS, *BARE_JOBS)),
    )
    write_json(state_path, results)
    write_report(results, out)
    return results


def _tah_phase(config: TwoHopConfig) -> tuple[str, ...]:
    """The jobs after the gate and the readout: the TaH arms, then (issue 23) the format-fair
    controls, in one phase so that both workers stay busy."""
    return (*TAH_JOBS, *BARE_JOBS) if config.bare_arms else TAH_JOBS


def _run(jobs: list, config: TwoHopConfig, show_progress: bool, finished) -> None:
    """Jobs on ``config.workers`` worker processes; with one worker, in this process (no
    start-up cost of a fresh interpreter: what keeps ``--quick`` fast)."""
    from tah.repro.jobs import run_jobs

    run_jobs(
        jobs,
        workers=config.workers,
        threads=config.threads,
        show_progress=show_progress,
        on_finish=finished,
        in_process=config.workers <= 1,
    )
