"""Errors the actors raise on purpose; the gateway maps each to one HTTP status. And how to
read the error an actor or task raised out of Ray's wrapper around it."""


class SessionGone(LookupError):
    """The session was deleted (or never existed); its actor should not serve it."""


class NotFound(LookupError):
    """A stream, file or waiting call that is not this session's; its message is what the
    caller reads (404)."""


class LLMFailed(RuntimeError):
    """The model's server could not be reached or refused the request."""


def cause_of(exc: BaseException) -> BaseException:
    """The exception an actor or task raised, out of Ray's `RayTaskError` around it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def cause_text(exc: BaseException) -> str:
    """The last line of that exception's message (no remote traceback)."""
    lines = str(cause_of(exc)).strip().splitlines()
    return lines[-1] if lines else type(cause_of(exc)).__name__


class Passivating(RuntimeError):
    """This activation of the session is ending (idle, shed, or superseded); ask again and
    the next activation answers."""
