"""Old import path of the engine's sampling names; the rule lives in :mod:`tah.model.sampling`
(one sampler for core, engine, server and eval), and tests and scripts written against the
engine still import it from here."""

from tah.model.sampling import (
    MIN_TEMPERATURE,
    SEED_RANGE,
    SamplingParams,
    filter_probs,
    make_generator,
    sample_rows,
)

__all__ = [
    "MIN_TEMPERATURE",
    "SEED_RANGE",
    "SamplingParams",
    "filter_probs",
    "make_generator",
    "sample_rows",
]
