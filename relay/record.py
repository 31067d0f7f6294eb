"""Frozen value classes without generated code: what ``@dataclass(frozen=True, slots=True)`` gives, for less.

``dataclasses`` compiles several methods from generated source for every class, at every start of every process
(``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``: one ``exec`` each). The
protocol's 31 message classes cost a relay client about 12 ms of its start that way; a ``Record`` subclass costs
what any class costs. Shared by the relay and the clients; no I/O, no imports of ours.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["FrozenInstanceError", "Record", "set_field"]


class FrozenInstanceError(AttributeError):
    """An attempt to set or delete a field of a ``Record`` (they are values: make a new one instead)."""


class Record:
    """A frozen value with slots: fields in ``__slots__`` (in ``__init__``'s order), set once in ``__init__``.

    What ``@dataclass(frozen=True, slots=True)`` gave these classes (equality and hash by class and fields, a
    ``Name(field=value, ...)`` repr, ``__match_args__``, no assignment after ``__init__``, copy and pickle), with
    the methods written once here instead of compiled from generated source for every class at every start of
    every process: that was about a sixth of a client's start-up (docs/design/speed.md section 16). Each class
    writes its ``__init__`` (a plain signature, checked by mypy, and faster than the generated one), setting
    each field with ``set_field(self, name, value)``.
    """

    __slots__: ClassVar[tuple[str, ...]] = ()
    __match_args__: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__match_args__ = cls.__slots__  # type: ignore[misc]  # for ``case Name(a, b)`` patterns

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.__slots__])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{self.__class__.__qualname__}({shown})"

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type[Record], tuple[Any, ...]]:
        return self.__class__, self._values()  # copy, deepcopy and pickle call __init__ again


set_field = object.__setattr__  # how a Record's __init__ sets its fields
