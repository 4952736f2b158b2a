"""Export one seed's TaH checkpoint from a reproduction run, with a note of where it came from.

This is how the model bundled for ``tah demo`` (``tah/assets/tiny-tah``) was made:
``tah repro tiny --export DIR`` copies the stage-2 TaH checkpoint and writes ``repro.json``
(the command, the settings, that seed's measured numbers) next to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tah.io import write_json
from tah.repro.methods import METHODS, model_dir

__all__ = ["export_checkpoint"]


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
