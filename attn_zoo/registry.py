"""Name → constructor registries: the single source of names for configs, the API and errors.

Two registries live here: attention modules and backbones. A module file registers itself with
a decorator, so adding a module needs no edit anywhere else.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from attn_zoo.attention._start import COMMON_OPTIONS, apply_init

# Attention options renamed so that one meaning has one name across modules (old name -> new):
# configs and sweeps written before still name the old ones, and the error says what to write.
RENAMED_ATTENTION_OPTIONS = {"k_size": "kernel_size", "bias": "mlp_bias"}
PACKAGE = Path(__file__).resolve().parent


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@dataclass
class Entry:
    name: str
    constructor: Callable[..., Any]
    description: str

    def defaults(self) -> dict[str, Any]:
        """Keyword-only options of the constructor and their defaults, as a yaml config writes them
        (tuples as lists), so a config's values compare equal to the defaults they repeat."""
        signature = inspect.signature(self.constructor)
        return {
            p.name: list(p.default) if isinstance(p.default, tuple) else p.default
            for p in signature.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
        }


@dataclass
class Registry:
    """``common``: options every entry takes beside its constructor's, handled by ``finish``
    (``finish(built, name, **common)`` returns what ``build`` gives back); ``renamed``: old option
    name -> new one, named in the error for an old name."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)
    common: dict[str, Any] = field(default_factory=dict)
    finish: Callable[..., Any] | None = None
    renamed: dict[str, str] = field(default_factory=dict)

    def register(self, name: str, description: str | None = None):
        def decorator(constructor):
            if name in self.entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            doc = description or (inspect.getdoc(constructor) or "").split("\n")[0]
            self.entries[name] = Entry(name, constructor, doc)
            return constructor

        return decorator

    def get(self, name: str) -> Entry:
        if name not in self.entries:
            # where the names came from: a clone run with another checkout's installed package reads that one's
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; valid: {', '.join(self.names())} (attn_zoo loaded from {PACKAGE})"
            )
        return self.entries[name]

    def names(self) -> list[str]:
        return sorted(self.entries)

    def check_options(self, name: str, options) -> Entry:
        """The entry of ``name``; TypeError naming the valid options if ``options`` has others."""
        entry = self.get(name)
        valid = set(entry.defaults()) | set(self.common)
        unknown = sorted(set(options) - valid)
        if unknown:
            renames = [f"{old} is now {self.renamed[old]}" for old in unknown if self.renamed.get(old) in valid]
            declared = set(list(inspect.signature(entry.constructor).parameters)[1:])  # after channels
            misdeclared = [option for option in unknown if option in declared] if self.kind == "attention" else []
            if misdeclared:  # a new module's slip
                renames.append(f"{', '.join(misdeclared)} must be keyword-only with a default to be an option: "
                               f"def __init__(self, channels, *, {misdeclared[0]}=...)")
            raise TypeError(
                f"{self.kind} '{name}' has no option {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(valid)) or '(none)'}" + (f" ({'; '.join(renames)})" if renames else "")
            )
        return entry

    def build(self, name: str, *args, **options):
        entry = self.check_options(name, options)
        common = {key: options.pop(key, default) for key, default in self.common.items()}
        built = entry.constructor(*args, **options)
        return self.finish(built, name, **common) if self.finish else built


ATTENTION = Registry("attention", common=COMMON_OPTIONS, finish=apply_init, renamed=RENAMED_ATTENTION_OPTIONS)
BACKBONES = Registry("backbone")

register_attention = ATTENTION.register
register_backbone = BACKBONES.register
