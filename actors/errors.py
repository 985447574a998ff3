"""Every error the gateway's HTTP map handles (gateway/errors.py maps each to one status), and
how to read the error an actor or task raised out of Ray's wrapper around it. Actors and the
gateway raise these; neither picks a status code."""


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


class StoreError(RuntimeError):
    """The database is unreachable or not one this server can use; the text says why."""


class TooManyListeners(RuntimeError):
    """The session has as many open /events streams as it may."""


class FilesFull(ValueError):
    """The session keeps as many files (or bytes) as it may; the text says which and why."""


class SessionsFull(RuntimeError):
    """Every live session actor is busy and the cluster's cap is reached."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("every session slot of the cluster is busy; try again shortly")
        self.retry_after = retry_after


class LimitExceeded(RuntimeError):
    """A per-user limit refused the request (429 with Retry-After; `limit` names it)."""

    def __init__(self, limit: str, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.limit = limit
        self.retry_after = max(1.0, retry_after)
        from actors.metrics import record

        record("limited", limit=limit)


class SignInNeeded(PermissionError):
    """An /api request without a user in `proxy` or `oidc` mode (401)."""

    def __init__(self, mode: str) -> None:
        super().__init__("sign-in needed: open /login" if mode == "oidc" else
                         "sign-in needed: this server expects a signed-in user from its proxy")
        self.login = "/login" if mode == "oidc" else None
