"""The scenario schema: what a scenario module declares, as dataclasses.

A scenario module (built-in or a user's) defines functions named ``scenario_<name>``
that take no argument and return a :class:`Scenario`. Each call must build a fresh
model and guide (new ``nn.Module``\\ s, new data): the function is called once per
quantity group and implementation, after the param store is cleared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

IMPLEMENTATIONS = ("ours", "pyro")


@dataclass(frozen=True)
class Posterior:
    """Posterior quantities by importance sampling from the model's prior.

    ``sites``: the latent sites whose marginal mean and variance are reported
    (``EmpiricalMarginal`` per site; values keep the site's shape).
    ``num_samples``: importance samples. ``predictive_args``/``predictive_kwargs``: when
    given, ``TracePredictive(model, posterior, predictive_samples).run(*args, **kwargs)``
    and the mean and variance of its ``predictive_site`` (default: the model's return
    value) are reported too."""

    sites: tuple[str, ...]
    num_samples: int = 500
    predictive_args: tuple | None = None
    predictive_kwargs: dict = field(default_factory=dict)
    predictive_samples: int = 300
    predictive_site: str = "_RETURN"

    def __post_init__(self) -> None:
        if isinstance(self.sites, str) or not self.sites:
            raise TypeError("Posterior.sites must be a non-empty tuple of site names, "
                            f"got {self.sites!r}")


@dataclass(frozen=True)
class Scenario:
    """One model and guide, and what to compute on them.

    ``estimator``: the class name in both namespaces (``pyro_svi_ext`` and
    ``pyro.infer``), built with ``elbo_kwargs``; ``ours_kwargs`` are added on the
    plugin's side only, and ``pyro_estimator`` names Pyro's class when it differs (a
    compiled estimator compared with Pyro's eager one). Computed: loss and gradients of
    one ``loss_and_grads``, then the losses and parameters of ``svi_steps`` Adam steps
    (``lr``), and ``posterior`` quantities when given."""

    model: Callable
    guide: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    seed: int = 0
    estimator: str = "Trace_ELBO"
    elbo_kwargs: dict = field(default_factory=dict)
    ours_kwargs: dict = field(default_factory=dict)
    pyro_estimator: str | None = None
    lr: float = 0.05
    svi_steps: int | None = None
    posterior: Posterior | None = None

    def estimator_for(self, impl: str) -> tuple[str, dict]:
        """``(class name, keyword arguments)`` for ``impl`` (``"ours"`` or ``"pyro"``)."""
        if impl == "pyro":
            return self.pyro_estimator or self.estimator, dict(self.elbo_kwargs)
        return self.estimator, {**self.elbo_kwargs, **self.ours_kwargs}


class ScenarioError(TypeError):
    """A scenario module that does not follow the schema (names the function)."""


def scenario_functions(module: ModuleType) -> dict[str, Callable[[], Scenario]]:
    """``{name: function}`` for the module's ``scenario_<name>`` functions, sorted."""
    return {name[len("scenario_"):]: fn for name, fn in sorted(vars(module).items())
            if name.startswith("scenario_") and callable(fn)}


def build(name: str, fn: Callable[[], Scenario]) -> Scenario:
    """Call a scenario function; :class:`ScenarioError` if it returns anything else."""
    scenario = fn()
    if not isinstance(scenario, Scenario):
        raise ScenarioError(f"scenario_{name}() returned {type(scenario).__name__}; it must "
                            "return compat_matrix.Scenario(model, guide, args=..., ...)")
    return scenario
