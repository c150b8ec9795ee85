"""Built-in scenarios: cases of the shared catalogue (:mod:`compat_matrix.catalogue`, the
models the test suite uses too) with the estimator they exercise, declared with the
scenario schema (:class:`compat_matrix.schema.Scenario`)."""

from __future__ import annotations

from compat_matrix.catalogue import pick
from compat_matrix.schema import Posterior, Scenario


def _case(name: str, seed: int, **fields) -> Scenario:
    (case,) = pick(name)
    model, guide, args = case.build()
    return Scenario(model, guide, args, seed=seed, **fields)


def scenario_normal_normal() -> Scenario:
    # model(None, 4) predicts 4 new observations
    return _case("normal_normal", 0,
                 posterior=Posterior(sites=("mu",), predictive_args=(None, 4)))


def scenario_nonreparam_plate() -> Scenario:
    return _case("nonreparam_in_plate", 1, elbo_kwargs={
        "num_particles": 4, "vectorize_particles": True, "max_plate_nesting": 1})


def scenario_tracegraph_baseline() -> Scenario:
    return _case("baseline_decaying_average", 2, estimator="TraceGraph_ELBO")


def scenario_hmm_enum() -> Scenario:
    return _case("hmm_history2", 3, estimator="TraceEnum_ELBO",
                 elbo_kwargs={"max_plate_nesting": 0})


def scenario_renyi() -> Scenario:
    return _case("normal_normal", 4, estimator="RenyiELBO",
                 elbo_kwargs={"alpha": 0.5, "num_particles": 4})


def scenario_autonormal_subsampled() -> Scenario:
    return _case("autonormal_subsampled", 5)


def scenario_compiled_trace_elbo() -> Scenario:
    """The compiled step against Pyro's eager Trace_ELBO on the same draws (Pyro's own
    JitTrace_ELBO draws a different random stream)."""
    return _case("normal_normal", 6, estimator="JitTrace_ELBO", pyro_estimator="Trace_ELBO",
                 ours_kwargs={"backend": "eager"}, elbo_kwargs={
                     "num_particles": 2, "vectorize_particles": True,
                     "max_plate_nesting": 1})


def scenario_compiled_hmm_enum() -> Scenario:
    return _case("hmm_history2", 7, estimator="JitTraceEnum_ELBO",
                 pyro_estimator="TraceEnum_ELBO", ours_kwargs={"backend": "eager"},
                 elbo_kwargs={"max_plate_nesting": 0})
