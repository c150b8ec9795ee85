"""What a compiled step did, in words a user can read: the graphs it compiled (with
which backend, in place or in the background, how long), swaps, recompiles and why,
the sentinel's checks and mismatches, and a fallback to eager with the line of code
that caused it. ``SVI.compile_report()`` returns the report of its step;
:func:`all_reports` those of every compiled step in the process (what
``pyro-svi-ext run --compile --report`` prints at exit)."""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field

#: every report made in this process (weak: a step nobody holds takes its report along)
_REPORTS: weakref.WeakSet = weakref.WeakSet()
_SERIAL = itertools.count()
#: reports kept alive whatever happens to their steps (``keep_reports``), else None
_KEPT: list | None = None


@dataclass
class Event:
    """One thing that happened, at a step (1-based: the step it happened on)."""

    step: int
    what: str
    detail: str = ""

    def __str__(self) -> str:
        return f"step {self.step}: {self.what}" + (f" ({self.detail})" if self.detail else "")


@dataclass(eq=False)
class CompileReport:
    """The record of one compiled step (one estimator, model and guide).

    ``graphs``: ``(backend, seconds, in_background)`` per graph compiled;
    ``events``: traces, swaps, recompiles, sentinel mismatches and fallbacks in order;
    ``checks``: sentinel checks run; ``mismatches``: those that found a difference;
    ``fallback``: why the step runs eagerly for good (None while it compiles);
    ``fallback_at``: the line of code that made it (``file:line``), when known;
    ``fallback_cause``: whose code read a value (``"model"``, ``"pyro"``,
    ``"pyro_svi_ext"``), when known.
    """

    estimator: str
    graphs: list[tuple[str, float, bool]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    checks: int = 0
    mismatches: int = 0
    fallback: str | None = None
    fallback_at: str | None = None
    fallback_cause: str | None = None
    steps: int = 0
    graph_steps: int = 0

    def __post_init__(self) -> None:
        self.serial = next(_SERIAL)
        _REPORTS.add(self)
        if _KEPT is not None:
            _KEPT.append(self)

    # --- what the step tells it ----------------------------------------------------------
    def note(self, what: str, detail: str = "") -> None:
        self.events.append(Event(self.steps + 1, what, detail))

    def compiled(self, backend: str, seconds: float, in_background: bool) -> None:
        self.graphs.append((backend, seconds, in_background))
        self.note(f"graph {len(self.graphs)} compiled with {backend!r}",
                  f"{seconds:.2f} s{' in the background' if in_background else ''}")

    def fell_back(self, reason: str, where: str | None, cause: str | None = None) -> None:
        self.fallback, self.fallback_at, self.fallback_cause = reason, where, cause
        self.note("running eagerly for good", reason + (f"; at {where}" if where else ""))

    # --- what the user reads -------------------------------------------------------------
    @property
    def recompiles(self) -> list[Event]:
        return [e for e in self.events if e.what.startswith("compiling again")]

    def as_dict(self) -> dict:
        return {"estimator": self.estimator, "steps": self.steps,
                "graph_steps": self.graph_steps,
                "graphs": [{"backend": b, "seconds": s, "background": bg}
                           for b, s, bg in self.graphs],
                "checks": self.checks, "mismatches": self.mismatches,
                "fallback": self.fallback, "fallback_at": self.fallback_at,
                "fallback_cause": self.fallback_cause,
                "events": [{"step": e.step, "what": e.what, "detail": e.detail}
                           for e in self.events]}

    def __str__(self) -> str:
        lines = [f"{self.estimator}: {self.steps} steps, {self.graph_steps} through a "
                 f"compiled graph, {len(self.graphs)} graphs compiled, "
                 f"{len(self.recompiles)} recompiles, {self.checks} sentinel checks "
                 f"({self.mismatches} mismatches)"]
        if self.fallback is not None:
            lines.append(f"  eager for good: {self.fallback}"
                         + (f" (at {self.fallback_at})" if self.fallback_at else ""))
        lines.extend(f"  {event}" for event in self.events)
        return "\n".join(lines)


def keep_reports() -> list[CompileReport]:
    """From now on every new report stays alive (a script run by ``pyro-svi-ext run
    --report`` drops its SVI objects before its end), in the list returned."""
    global _KEPT
    _KEPT = []
    return _KEPT


def all_reports() -> list[CompileReport]:
    """The reports of the compiled steps alive in this process, oldest first."""
    return sorted(_REPORTS, key=lambda r: r.serial)
