"""Argument checks shared by the library and the code built on it (public: the study uses them).

Example:
  >>> from ntk.checks import check_choice
  >>> check_choice("optimizer", "adam", {"sgd": None, "adam": None})
  >>> check_choice("optimizer", "lion", ("sgd", "adam"))
  Traceback (most recent call last):
  ...
  ValueError: optimizer: unknown value 'lion'; valid: ['adam', 'sgd']
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["check_choice", "lookup"]


def check_choice(name: str, value: Any, registry: Collection) -> None:
    """Raises ``ValueError("NAME: unknown value VALUE; valid: [sorted choices]")`` unless
    ``value`` is one of ``registry`` (a dict of named entries, a tuple or set of names)."""
    if value not in registry:
        raise ValueError(f"{name}: unknown value {value!r}; valid: {sorted(registry)}")


def lookup(name: str, value: Any, registry: Mapping) -> Any:
    """``registry[value]`` after :func:`check_choice` (the registry pattern: names to entries)."""
    check_choice(name, value, registry)
    return registry[value]
