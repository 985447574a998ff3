"""Placeholder until the detector deployment lands."""

from actors.settings import Settings


def deploy(settings: Settings) -> None:
    return None
