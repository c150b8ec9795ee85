"""The one messenger the package puts on pyro's effect stack.

It records sample and param sites as they happen and, when running a model against a
guide, replays the guide's latent values (what ``poutine.trace`` + ``poutine.replay``
do together, in one handler and without building a graph).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pyro.poutine.messenger import Messenger

from pyro_svi_ext.pyro_compat import hidden_from_traces, is_subsample
from pyro_svi_ext.trace.devices import is_device_mismatch, mixed_devices_in_run
from pyro_svi_ext.trace.provenance import track
from pyro_svi_ext.trace.sites import Site, site_from_message
from pyro_svi_ext.trace.static_plates import constant_indices

#: key under which a sequential assignment keeps the subsample indices it replays
SUBSAMPLES = "_pyro_svi_ext_subsamples"


class SiteMismatchError(ValueError, RuntimeError):
    """A site the model samples is observed in the guide (a ``RuntimeError`` as in Pyro's
    replay, and a ``ValueError`` as this package documented before)."""


class SequentialBranch(Exception):  # noqa: N818 (control flow, not an error)
    """Raised at a sequentially enumerated site that has no value assigned yet; carries
    the values to branch over and what the run drew before it (``sites``,
    ``subsamples``), which every branch then reuses."""

    def __init__(self, name: str, values: list, sites: dict, subsamples: dict, infer: dict):
        super().__init__(name)
        self.name = name
        self.infer = infer
        self.values = values
        self.sites = sites
        self.subsamples = subsamples


class SiteRecorder(Messenger):
    """Records sample sites (``sites``) and the unconstrained params used (``params``).

    :param replay: guide sites whose values replace the model's latent draws.
    :param params_only: record params only (used around custom losses).
    :param track_nonreparam: wrap the value of each latent site whose distribution has no
        ``rsample`` in a :class:`~pyro_svi_ext.trace.provenance.TrackedTensor` naming the
        site, so everything computed from it records that dependency.

    Raises ``RuntimeError`` naming the site when two sample sites, or a sample site and a
    param, share a name, and :class:`SiteMismatchError` when a replayed guide site is
    observed but the model samples it.
    """

    def __init__(self, replay: Mapping[str, Site] | None = None, params_only: bool = False,
                 track_nonreparam: bool = False, sequential: Mapping | None = None):
        super().__init__()
        # values chosen for sites marked infer={"enumerate": "sequential"} (guide runs)
        self.sequential = sequential
        self.replay = replay
        self.params_only = params_only
        self.track_nonreparam = track_nonreparam
        self.sites: dict[str, Site] = {}
        self.params: dict[str, torch.Tensor] = {}
        # plate subsample indices drawn here, replayed so model and guide share them
        self.subsamples: dict[str, torch.Tensor] = {}
        # plates that drew fewer indices than their size (minibatches)
        self.subsampled_plates: set[str] = set()
        self.replay_subsamples: Mapping[str, torch.Tensor] = {}

    def _pyro_sample(self, msg: dict) -> None:
        if is_subsample(msg["fn"]):
            indices = self.replay_subsamples.get(msg["name"])
            if indices is None and msg["value"] is None and not msg["is_observed"]:
                indices = constant_indices(msg["fn"])
            if indices is not None and not msg["is_observed"]:
                msg["value"] = indices
                msg["done"] = True
            return
        if self.sequential is not None and not msg["is_observed"]:
            self._assign_sequential(msg)
        if self.replay is None or msg["is_observed"]:
            return
        guide_site = self.replay.get(msg["name"])
        if guide_site is None:
            return
        if guide_site.is_observed:
            raise SiteMismatchError(
                f"site {msg['name']} must be sampled in trace: it is observed in the guide "
                "but sampled in the model; a guide must sample every latent site it shares "
                "with the model"
            )
        msg["value"] = guide_site.value
        msg["done"] = True
        msg["infer"] = guide_site.infer

    def _assign_sequential(self, msg: dict) -> None:
        infer = msg["infer"] or {}
        name = msg["name"]
        if name in self.sequential:  # (value, infer) fixed for this branch
            msg["value"], msg["infer"] = self.sequential[name]
            msg["done"] = True
            return
        if infer.get("enumerate") == "sequential" and not msg["done"]:
            support = msg["fn"].enumerate_support(expand=infer.get("expand", False))
            raise SequentialBranch(name, list(support),
                                   {n: (s.value, s.infer) for n, s in self.sites.items()},
                                   dict(self.subsamples), dict(infer))

    def _pyro_post_sample(self, msg: dict) -> None:
        if self.params_only:
            return
        if is_subsample(msg["fn"]):
            self.subsamples[msg["name"]] = msg["value"]
            if msg["value"].numel() < msg["fn"].size and not getattr(msg["fn"], "full_block",
                                                                      False):
                self.subsampled_plates.add(msg["name"])
            return
        if hidden_from_traces(msg["infer"]):
            return
        name = msg["name"]
        if name in self.sites:
            raise RuntimeError(f"Multiple sample sites named {name!r}")
        if name in self.params:
            raise RuntimeError(f"{name} is already in the trace as a param (a sample site "
                               "and a param cannot share a name)")
        if (self.track_nonreparam and not msg["is_observed"]
                and not getattr(msg["fn"], "has_rsample", False)):
            msg["value"] = track(msg["value"], frozenset((name,)))
        self.sites[name] = site_from_message(msg)

    def _pyro_post_param(self, msg: dict) -> None:
        if msg["name"] in self.sites:
            raise RuntimeError(f"{msg['name']} is already in the trace as a sample (a param "
                               "and a sample site cannot share a name)")
        value = msg["value"]
        unconstrained = getattr(value, "unconstrained", None)
        self.params[msg["name"]] = unconstrained() if unconstrained is not None else value


def run_recorded(fn, args: tuple, kwargs: dict, against: SiteRecorder | None = None,
                 track_nonreparam: bool = False, sequential: Mapping | None = None):
    """Run ``fn(*args, **kwargs)`` under a :class:`SiteRecorder`, replaying the latent
    values and subsample indices that ``against`` (a guide run) recorded.

    Returns ``(recorder, result)``.
    """
    recorder = SiteRecorder(replay=None if against is None else against.sites,
                            track_nonreparam=track_nonreparam, sequential=sequential)
    if against is not None:
        recorder.replay_subsamples = against.subsamples
    elif sequential is not None:
        recorder.replay_subsamples = sequential.get(SUBSAMPLES, {})
    with recorder:
        try:
            result = fn(*args, **kwargs)
        except RuntimeError as err:
            if not is_device_mismatch(err):
                raise
            params = dict(against.params if against is not None else {})
            params.update(recorder.params)
            raise mixed_devices_in_run(
                err, "guide" if against is None else "model",
                next(reversed(recorder.sites), None), params, args, kwargs) from err
    return recorder, result
