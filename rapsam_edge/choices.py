"""Typed user-facing options: an Enum whose values are the words users type, with one parse error sentence."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from .errors import InputError

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """Base of the typed options (protocol, click protocol, canvas mode ...): subclasses list their members
    and name themselves in :meth:`what`, so every bad value gets the same one sentence."""

    @classmethod
    def what(cls) -> str:
        return cls.__name__.lower()

    @classmethod
    def parse(cls: type[C], value: C | str) -> C:
        try:
            return cls(value)
        except ValueError:
            raise InputError(f"unknown {cls.what()} {value!r}; choose one of "
                             f"{', '.join(m.value for m in cls)}.") from None
