"""``tah repro plateau``: does TaH win on word problems once Standard has stopped improving?

The tiny reproduction (:mod:`tah.repro.tiny`) is training-bound: more steps lift Standard more
than any method does, so it cannot test the paper's premise (hard tokens need more computation
than one pass gives). This study first shows, on validation problems and with Standard-family
models only, that its setting is the one the premise needs (the gate, :mod:`.gate`): Standard
has plateaued, a 2x deeper model beats it, a wider one does not. The gate and the readout are
written to ``results.json`` before any TaH model trains; then AlwaysThink+, TaH+ with the
paper's one-token decider and TaH+ with a previous-token decider are trained on Standard's rows
and every arm is scored on the test problems. A failed gate still runs the TaH arms (unless
``on_gate_fail=stop``), and the results say ``exploratory``.

Resumable: finished steps are skipped; a run folder made with other settings is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tah.errors import ConfigError
from tah.io import write_json
from tah.repro.jobs import JobResult, run_jobs, utc_timestamp
from tah.repro.plateau.config import PlateauConfig
from tah.repro.plateau.gate import gate_accuracy, gate_verdict
from tah.repro.plateau.graph import gate_jobs, tah_jobs
from tah.repro.tiny.rows import prepare_data

__all__ = ["run_plateau"]

_NOT_SETTINGS = ("seeds", "workers", "threads", "on_gate_fail")


def _check_settings(config: PlateauConfig, out: Path) -> None:
    saved = out / "repro_config.json"
    if saved.is_file():
        previous = json.loads(saved.read_text(encoding="utf-8"))
        now = config.to_dict()
        differ = sorted(
            k
            for k in set(previous) | set(now)
            if k not in _NOT_SETTINGS and previous.get(k) != now.get(k)
        )
        if differ:
            raise ConfigError(
                f"{out} holds a plateau study made with other settings ({', '.join(differ)}); "
                "choose another --output or delete it"
            )
    write_json(saved, config.to_dict())


def run_plateau(
    config: PlateauConfig,
    out: str | Path,
    *,
    show_progress: bool = True,
    command: Callable[[list[str]], int] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study into ``out``; returns the results written to results.json."""
    from tah.repro.plateau.report import collect, preregistration, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.validate()
    _check_settings(config, out)
    state_path = out / "state.json"
    state: dict[str, Any] = (
        json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    )
    state.setdefault("timings", {})
    started = time.perf_counter()

    def record(result: JobResult) -> None:
        if not result.skipped:
            state["timings"][result.name] = {"wall_s": result.wall_s, "cpu_s": result.cpu_s}
            write_json(state_path, state)

    def run(jobs: list) -> None:
        run_jobs(
            jobs,
            workers=config.workers,
            threads=config.threads,
            show_progress=show_progress,
            on_finish=record,
            command=command,
            in_process=config.workers <= 1,
        )

    info = prepare_data(config, out)
    run(gate_jobs(config, out, info["vocab_size"], command))
    gate = gate_verdict(gate_accuracy(out, config.seeds), config)
    earlier = state.get("gate") or {}
    same = {k: v for k, v in earlier.items() if k != "recorded_at"} == json.loads(json.dumps(gate))
    gate["recorded_at"] = earlier["recorded_at"] if same else utc_timestamp()
    if not same:
        state.setdefault("gate_history", []).append(
            {"seeds": config.seeds, "passed": gate["passed"], "at": gate["recorded_at"]}
        )
    state["gate"] = gate
    # registered once, before the first TaH job; a later invocation keeps the first record
    state.setdefault("readout", {**preregistration(config), "registered_at": utc_timestamp()})
    run_tah = gate["passed"] or config.on_gate_fail == "exploratory"
    state["exploratory"] = not gate["passed"]
    write_json(state_path, state)  # the gate and the readout are on disk before any TaH model
    if run_tah:
        run(tah_jobs(config, out, info["vocab_size"], command))
    else:
        state["stopped"] = "the gate failed and on_gate_fail=stop: no TaH model was trained"
    state["wall_time_s_this_invocation"] = time.perf_counter() - started
    write_json(state_path, state)
    results = collect(config, out, info, state)
    write_report(results, out)
    return results
