"""Backends from installed packages: the entry-point group `gpt2_three_ways.conformance_backends`.

A package adds backends to the conformance suite by declaring, in its pyproject.toml,

    [project.entry-points."gpt2_three_ways.conformance_backends"]
    my-backend = "my_package:backend"

where `my_package.backend` is a zero-argument callable returning one `conformance.backends.Backend`
or a list of them (examples/gpt2-conformance-plugin is a complete one; docs/conformance.md, "Adding a
backend", says what each method must do). `plugin_backends(taken)` loads every entry point of the
group and checks what it returns:

    - each item is a Backend, with precision "fp32" or "bf16" (the ceiling rows a plugin is held to);
    - its name is letters, digits and . _ + - (it is a pytest id, and a --backends list is split at commas);
    - its name is not taken, by a built-in backend or by a plugin loaded before it.

An entry point that raises, returns something else, or whose backend breaks a rule is not dropped:
it becomes a `PluginFailure` in the registry, named "<distribution>:<entry point>", which is never
available (the reason is the error) and which `conformance.report` and the pytest suite count as a
failure. The backends an entry point returns that pass the checks are kept. Each accepted backend's
`origin` records the distribution, its version and the entry point.

Order: entry points sorted by (distribution, entry point name), the backends of one in the order it
returns them; the same in every process, so that pytest (and pytest-xdist's workers) collect the same
test ids. With no plugin installed this costs one scan of the installed distributions' metadata
(milliseconds) and imports nothing.
"""

from __future__ import annotations

import re
from importlib import metadata

from conformance.backends import Backend, Origin

GROUP = "gpt2_three_ways.conformance_backends"
PRECISIONS = ("fp32", "bf16")
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class PluginFailure(Backend):
    """An entry point of the group that did not give a usable backend; `error` says why in one line."""

    def __init__(self, name: str, origin: Origin, error: str):
        super().__init__(name, "-", "-", f"plugin error: {error}")
        self.origin = origin
        self.error = error

    def available(self) -> tuple[bool, str]:
        return False, f"plugin error: {self.error}"


def _entry_points() -> list[metadata.EntryPoint]:
    """The group's entry points of every installed distribution (tests replace this to plant their own)."""
    return list(metadata.entry_points(group=GROUP))


def _origin(ep: metadata.EntryPoint) -> Origin:
    dist = getattr(ep, "dist", None)
    name = (dist.metadata["Name"] if dist is not None else None) or "(unknown distribution)"
    version = dist.version if dist is not None else "?"
    return Origin(name, version, f"{ep.name} = {ep.value}")


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _refusal(backend: Backend, taken: dict[str, Origin]) -> str | None:
    """Why `backend` cannot join the registry, or None."""
    name = getattr(backend, "name", None)
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        return f"backend name {name!r} is not letters, digits and . _ + - (starting with a letter or digit)"
    if name in taken:
        return f"backend name {name!r} is already taken by {taken[name]}; refused"
    if backend.precision not in PRECISIONS:
        return f"backend {name!r}: precision {backend.precision!r} is none of {', '.join(PRECISIONS)}"
    return None


def plugin_backends(taken: dict[str, Origin]) -> list[Backend]:
    """Every installed plugin's backends (and a PluginFailure per entry point that failed), in a fixed order.

    taken  the names already in the registry (the built-in backends) -> their origin
    """
    taken = dict(taken)
    out: list[Backend] = []
    eps = sorted(_entry_points(), key=lambda ep: (_origin(ep).distribution, ep.name))
    for ep in eps:
        origin = _origin(ep)
        failure_name = f"{origin.distribution}:{ep.name}"
        try:
            made = ep.load()()
        except Exception as e:  # the plugin's own bug: reported as its row, the suite goes on
            out.append(PluginFailure(failure_name, origin, f"loading {ep.value} raised {_one_line(e)}"))
            continue
        items = made if isinstance(made, list | tuple) else [made]
        errors = []
        for b in items:
            if not isinstance(b, Backend):
                errors.append(f"{ep.value} returned {type(b).__name__}, not a conformance.backends.Backend")
                continue
            why = _refusal(b, taken)
            if why:
                errors.append(why)
                continue
            b.origin = origin
            taken[b.name] = origin
            out.append(b)
        if not items:
            errors.append(f"{ep.value} returned no backend")
        if errors:
            out.append(PluginFailure(failure_name, origin, "; ".join(errors)))
    return out
