"""Think-at-Hard: selective latent iterations for reasoning language models.

Public API: :class:`TaHConfig` and :class:`TaHForCausalLM`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tah.config import TaHConfig
from tah.errors import TaHError

__version__ = "0.1.0"
__all__ = ["TaHConfig", "TaHForCausalLM", "TaHError", "__version__"]

if TYPE_CHECKING:
    from tah.model.wrapper import TaHForCausalLM


def __getattr__(name: str) -> Any:
    # Importing torch/transformers lazily keeps `import tah` (and `tah --help`) fast.
    if name == "TaHForCausalLM":
        from tah.model.wrapper import TaHForCausalLM

        return TaHForCausalLM
    raise AttributeError(f"module 'tah' has no attribute {name!r}")
