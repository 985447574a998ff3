"""Errors the actors raise on purpose; the gateway maps each to one HTTP status."""


class SessionGone(LookupError):
    """The session was deleted (or never existed); its actor should not serve it."""


class NotFound(LookupError):
    """A stream or file that is not this session's."""


class ToolError(Exception):
    """A tool failed in a way the model should read about (its text is the tool's result)."""


class LLMFailed(RuntimeError):
    """The model's server could not be reached or refused the request."""


class Passivating(RuntimeError):
    """This activation of the session is ending (idle, shed, or superseded); ask again and
    the next activation answers."""
