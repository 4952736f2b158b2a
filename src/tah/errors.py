"""The one exception family users see.

Every error a user can cause (bad config, bad checkpoint, bad data, bad request) raises a
subclass of :class:`TaHError` whose message names the offending input and how to fix it. The
CLI prints these messages without a traceback (``--debug`` shows it).
"""

from __future__ import annotations


class TaHError(Exception):
    """Base class for errors caused by user input."""


class ConfigError(TaHError, ValueError):
    """A configuration value or recipe key is invalid."""


class CheckpointError(TaHError, OSError):
    """A checkpoint directory is missing files or holds something we refuse to load."""


class UnsupportedModelError(TaHError, TypeError):
    """The wrapped Hugging Face model cannot run under TaH."""


class DataError(TaHError, ValueError):
    """Input data (records, labels, prompts) is malformed or inconsistent."""
