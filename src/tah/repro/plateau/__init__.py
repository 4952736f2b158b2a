"""``tah repro plateau``: TaH on word problems once Standard has plateaued (issue 23).

The gate (:mod:`.gate`) is recorded before any TaH model; the arms (:mod:`.arms`) are built on
the tiny reproduction's graph (:mod:`.graph`); :mod:`.report` writes results.{json,md,png}.
"""

from tah.repro.plateau.config import PlateauConfig, preset
from tah.repro.plateau.study import run_plateau

__all__ = ["PlateauConfig", "preset", "run_plateau"]
