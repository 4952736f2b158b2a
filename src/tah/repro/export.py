"""Export one seed's TaH checkpoint from a reproduction run, with a note of where it came from.

This is how the models bundled for ``tah demo`` were made: ``tah repro tiny --export DIR``
(``tah/assets/tiny-tah``) and ``tah repro twohop --export DIR`` (``tah/assets/twohop-tah``, for
``tah demo --twohop``) copy the final TaH checkpoint and write ``repro.json`` (the command, the
settings, that seed's measured numbers) next to it; the two-hop one also gets the task's
word-level tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from tah.io import write_json
from tah.repro.methods import METHODS, model_dir

__all__ = ["export_checkpoint", "export_twohop_checkpoint"]

# How the two-hop arms are named where users read them (the summary the demo prints).
ARM_NAMES = {"tahplus": "TaH+", "standard": "Standard", "alwaysthink": "AlwaysThink"}


def export_checkpoint(
    out: str | Path, seed: int, dest: str | Path, method: str = "tahplus"
) -> Path:
    """Copy one seed's final TaH checkpoint to ``dest`` with a ``repro.json`` saying where it
    came from and how it scored (this is how the bundled ``tah demo`` model was made)."""
    import shutil

    from tah.errors import CheckpointError
    from tah.io import atomic_dir

    out = Path(out)
    chosen = {m.key: m for m in METHODS}[method]
    source = model_dir(out, seed, chosen)
    results_path = out / "results.json"
    if not (source / "tah_config.json").is_file() or not results_path.is_file():
        raise CheckpointError(
            f"{out} has no finished {chosen.label} checkpoint for seed {seed}; run the "
            "reproduction first"
        )
    results = json.loads(results_path.read_text(encoding="utf-8"))
    if str(seed) not in results["per_seed"]:
        raise CheckpointError(f"seed {seed} is not in the results of {out}")
    numbers = results["per_seed"][str(seed)]["methods"][method]
    config = results["config"]
    summary = (
        f"trained by `tah repro tiny` (seed {seed}): answer accuracy "
        f"{100 * numbers['accuracy']:.1f} % on {results['data']['test']} held-out problems, "
        f"{100 * numbers['iter_share']:.1f} % of generated tokens iterated"
    )
    with atomic_dir(dest) as tmp:
        for item in source.iterdir():
            if item.name == "trainer_state.pt":  # resume state: not part of a shipped model
                continue
            target = tmp / item.name
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                shutil.copy2(item, target)
        write_json(
            tmp / "repro.json",
            {
                "command": f"tah repro tiny --output {out}",
                "seed": seed,
                "method": chosen.label,
                "difficulty": config["difficulty"],
                "config": config,
                "metrics": numbers,
                "summary": summary,
            },
        )
    return Path(dest)


def export_twohop_checkpoint(out: str | Path, seed: int, dest: str | Path) -> Path:
    """Copy one seed's TaH+ from a finished ``tah repro twohop`` run to ``dest``, with the
    task's tokenizer and a ``repro.json`` (task, settings, that seed's numbers)."""
    import shutil

    from tah.data.twohop import TwoHopTask, build_tokenizer
    from tah.errors import CheckpointError
    from tah.io import atomic_dir
    from tah.repro.twohop_config import job_dir

    out = Path(out)
    source = job_dir(out, seed, "tahplus") / "model"
    results_path = out / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
    row = (results.get("per_seed") or {}).get(str(seed))
    if not (source / "tah_config.json").is_file() or not row or "tahplus" not in row:
        raise CheckpointError(
            f"{out} has no finished TaH+ model for seed {seed}; run `tah repro twohop` first"
        )
    numbers = {arm: row[arm] for arm in ("tahplus", "standard", "alwaysthink") if arm in row}
    acc = {arm: 100 * n["accuracy"]["gf"] for arm, n in numbers.items()}
    summary = (
        f"trained by `tah repro twohop` (seed {seed}, gate "
        f"{'passed' if results['gate']['passed'] else 'FAILED'}): two-hop accuracy "
        + ", ".join(f"{ARM_NAMES[arm]} {value:.1f} %" for arm, value in acc.items())
        + f" on {results['config']['test_problems']} held-out problems; "
        f"{100 * row['tahplus']['share_tokens_iterating']:.1f} % of TaH+'s tokens ran depth 2"
    )
    with atomic_dir(dest) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        build_tokenizer(TwoHopTask(**results["task"])).save_pretrained(str(tmp))
        write_json(
            tmp / "repro.json",
            {
                "command": f"tah repro twohop --output {out}",
                "seed": seed,
                "method": "TaH+",
                "task": results["task"],
                "config": results["config"],
                "gate_passed": results["gate"]["passed"],
                "metrics": {
                    arm: {k: n[k] for k in ("accuracy", "share_tokens_iterating") if k in n}
                    for arm, n in numbers.items()
                },
                "summary": summary,
            },
        )
    return Path(dest)
