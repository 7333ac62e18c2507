"""Validation of named choices, shared by the parts of the attention modules."""
from __future__ import annotations

from typing import Iterable


def check_choice(kind: str, value: str, choices: Iterable[str]) -> None:
    """Raise where a bad option enters, naming the valid choices."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {kind} '{value}'; valid: {', '.join(choices)}")
