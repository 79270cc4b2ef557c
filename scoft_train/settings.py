"""Settings declared once: every field of a settings dataclass carries its default, help
text, range and choices (`setting(...)`). The engine checks values against that
declaration (`problems`), and the CLI options and the node widgets are derived from it
(`specs`), so no default, bound or choice list is written twice.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable

Choices = tuple | Callable[[], tuple]


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            step: float | None = None, choices: Choices | None = None) -> Any:
    """A dataclass field with its declaration: `min`/`max` bound numbers (inclusive),
    `step` is the widget increment, `choices` a tuple or a function returning one (for
    registries filled at run time). A None default marks an optional value (a path)."""
    metadata = {"help": help, "min": min, "max": max, "step": step, "choices": choices}
    return dataclasses.field(default=default, metadata=metadata)


def redefault(cls: type, name: str, default: Any) -> Any:
    """`cls`'s declaration of `name` with another default (for a subclass whose method
    wants a different starting point); help, range and choices stay the declared ones."""
    declared = {f.name: f for f in dataclasses.fields(cls)}[name]
    return dataclasses.field(default=default, metadata=declared.metadata)


@dataclass(frozen=True)
class Spec:
    """One declared setting, ready for a CLI option or a widget."""

    name: str
    kind: type
    default: Any
    help: str
    min: float | None
    max: float | None
    step: float | None
    choices: tuple | None

    @property
    def optional(self) -> bool:
        return self.default is None


def _base_kind(hint) -> type:
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if args else hint


def specs(cls: type) -> list[Spec]:
    """The declared settings of `cls` in declaration order (nested settings dataclasses,
    such as loss weights, are left to the caller)."""
    hints = typing.get_type_hints(cls)
    found = []
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            continue
        meta = field.metadata
        choices = meta.get("choices")
        found.append(Spec(
            name=field.name, kind=_base_kind(hints[field.name]), default=field.default, help=meta["help"],
            min=meta.get("min"), max=meta.get("max"), step=meta.get("step"),
            choices=tuple(choices() if callable(choices) else choices) if choices is not None else None,
        ))
    return found


def problems(instance) -> list[str]:
    """Every value of `instance` outside its declared range or choices, as messages."""
    found = []
    for spec in specs(type(instance)):
        value = getattr(instance, spec.name)
        if value is None and spec.optional:
            continue
        if spec.choices is not None and value not in spec.choices:
            found.append(f"{spec.name} {value!r}: choose one of {', '.join(map(str, spec.choices))}")
        if spec.min is not None and value < spec.min:
            found.append(f"{spec.name} must be >= {spec.min:g}, got {value}")
        if spec.max is not None and value > spec.max:
            found.append(f"{spec.name} must be <= {spec.max:g}, got {value}")
    return found


def help_of(cls: type, name: str) -> str:
    return {spec.name: spec.help for spec in specs(cls)}[name]


def from_mapping(cls: type, values: dict, what: str):
    """`cls(**values)`, refusing unknown names (listing the known ones)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)
