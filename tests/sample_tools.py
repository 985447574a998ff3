"""A module of plain functions that tests allow `add_function_tools` to add."""


def add_numbers(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


def _hidden(text: str) -> str:
    return text
