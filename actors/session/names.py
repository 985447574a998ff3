"""How a session ID maps to its actor, without the ID (a capability) ever showing in Ray."""

import hashlib

NAMESPACE = "llmcam"


def session_key(session_id: str) -> str:
    """First 32 hex digits of the SHA-256 of the session ID."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:32]


def actor_name(session_id: str) -> str:
    return f"session:{session_key(session_id)}"
