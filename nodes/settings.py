"""Node widgets derived from the engine's settings declarations (scoft_train/settings.py):
type, default, range, step and choices come from the dataclass field, the tooltip from its
help; nothing here restates a bound or a choice list.

A training node shows the settings a user changes every run; the rest come from its
Advanced Settings node as an `AdvancedSettings` (that node's widget values by name), and
an unconnected settings input means that node's defaults (`widget_defaults`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..scoft_train.settings import Spec, specs
from .common import tip

OPTIONAL_PATH = " Empty = none."


def widget(spec: Spec, default=None) -> tuple:
    """A ComfyUI widget spec for one declared setting (`default` overrides the declared one)."""
    value = spec.default if default is None else default
    if spec.choices is not None:
        return (list(spec.choices), tip(spec.help, default=value))
    if spec.kind is bool:
        return ("BOOLEAN", tip(spec.help, default=value))
    if spec.kind in (int, float):
        limits = {key: getattr(spec, key) for key in ("min", "max", "step") if getattr(spec, key) is not None}
        if spec.kind is int:
            return ("INT", tip(f"{spec.help} (integer {spec.min}..{spec.max})", default=value, **limits))
        return ("FLOAT", tip(f"{spec.help} ({spec.min:g}..{spec.max:g})", default=value, **limits))
    if spec.kind is str:
        return ("STRING", tip(spec.help + (OPTIONAL_PATH if spec.optional else ""), default=value or ""))
    raise TypeError(f"setting {spec.name}: no widget for type {spec.kind!r}")


def widgets(cls: type, names: list[str] | None = None, defaults: dict | None = None) -> dict[str, tuple]:
    """Widgets for the declared settings of `cls` (all, or `names` in that order)."""
    declared = {spec.name: spec for spec in specs(cls)}
    chosen = names if names is not None else list(declared)
    return {name: widget(declared[name], (defaults or {}).get(name)) for name in chosen}


def widget_defaults(widgets: dict[str, tuple]) -> dict[str, Any]:
    """The value each widget starts with: its declared default, for a combo without one its first choice."""
    values = {}
    for name, (kind, *options) in widgets.items():
        declared = options[0] if options else {}
        values[name] = declared["default"] if "default" in declared else kind[0]
    return values


@dataclass(frozen=True)
class AdvancedSettings:
    """What an Advanced Settings node hands its training node: its widget values by name (read-only)."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))

    def __str__(self) -> str:  # shown by ComfyUI in error reports
        return "AdvancedSettings(" + ", ".join(f"{k}={v!r}" for k, v in self.values.items()) + ")"


def checked_settings(verdict: bool | str, values: dict) -> tuple[AdvancedSettings]:
    """An Advanced Settings node's output, after its path check `verdict` (True or the message).
    Checked when the node runs too: a ComfyUI that validates only the nodes on required inputs
    never calls VALIDATE_INPUTS for a node that feeds an optional one."""
    if verdict is not True:
        raise ValueError(verdict)
    return (AdvancedSettings(values),)
