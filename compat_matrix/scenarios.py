"""Built-in scenarios: cases of the shared catalogue (:mod:`compat_matrix.catalogue`, the
models the test suite uses too) with the estimator they exercise.

A scenario module (built-in or a user's) defines functions named ``scenario_<name>``
returning ``(model, guide, args, seed)``; optional attributes on the function select the
estimator (``estimator``, default ``"Trace_ELBO"``), its arguments (``elbo_kwargs``),
arguments for this package's side only (``ours_kwargs``), the Pyro class to compare with
when it differs (``pyro_estimator``) and extra quantities (``extras``: ``"importance"``,
``"predictive"``).
"""

from __future__ import annotations

from compat_matrix.catalogue import pick


def _case(name: str, seed: int):
    (case,) = pick(name)
    return (*case.build(), seed)


def _with(estimator="Trace_ELBO", elbo_kwargs=None, extras=()):
    def mark(fn):
        fn.estimator = estimator
        fn.elbo_kwargs = elbo_kwargs or {}
        fn.extras = tuple(extras)
        return fn

    return mark


@_with("Trace_ELBO", extras=("importance", "predictive"))
def scenario_normal_normal():
    return _case("normal_normal", 0)


@_with("Trace_ELBO", {"num_particles": 4, "vectorize_particles": True, "max_plate_nesting": 1})
def scenario_nonreparam_plate():
    return _case("nonreparam_in_plate", 1)


@_with("TraceGraph_ELBO")
def scenario_tracegraph_baseline():
    return _case("baseline_decaying_average", 2)


@_with("TraceEnum_ELBO", {"max_plate_nesting": 0})
def scenario_hmm_enum():
    return _case("hmm_history2", 3)


@_with("RenyiELBO", {"alpha": 0.5, "num_particles": 4})
def scenario_renyi():
    return _case("normal_normal", 4)


@_with("Trace_ELBO")
def scenario_autonormal_subsampled():
    return _case("autonormal_subsampled", 5)


def _compiled(pyro_estimator):
    def mark(fn):
        fn.ours_kwargs = {"backend": "eager"}
        fn.pyro_estimator = pyro_estimator
        return fn

    return mark


@_compiled("Trace_ELBO")
@_with("JitTrace_ELBO", {"num_particles": 2, "vectorize_particles": True,
                         "max_plate_nesting": 1})
def scenario_compiled_trace_elbo():
    """The compiled step against Pyro's eager Trace_ELBO on the same draws (Pyro's own
    JitTrace_ELBO draws a different random stream)."""
    return _case("normal_normal", 6)


@_compiled("TraceEnum_ELBO")
@_with("JitTraceEnum_ELBO", {"max_plate_nesting": 0})
def scenario_compiled_hmm_enum():
    return _case("hmm_history2", 7)
