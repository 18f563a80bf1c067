"""Errors the engine raises for bad input, as opposed to bugs.

Every one is a ``ValueError`` (the ``kvtier`` CLI prints those without a traceback) with a
message that names the problem and how to fix it. A request-level error is raised by
``LLMEngine.add_request`` before the request touches any engine state, so the engine keeps
serving the requests it already has.
"""

from __future__ import annotations


class EngineError(ValueError):
    """Base of every input error the engine raises."""


class ModelNotFoundError(EngineError):
    """The model path does not exist or holds no weights the engine can read."""


class UnsupportedModelError(EngineError):
    """The weights are of an architecture, quantisation or setting the engine cannot run."""


class InvalidRequestError(EngineError):
    """A request the engine cannot serve: too long a prompt, bad sampling settings."""
