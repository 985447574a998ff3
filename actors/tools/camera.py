"""Placeholder until the camera and vision tools land."""

TOOLS: list = []
