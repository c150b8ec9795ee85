"""The trace layer: the only package code that reads pyro's messages."""

from pyro_svi_ext.trace.checks import nonfinite_sites
from pyro_svi_ext.trace.posterior import posterior_trace
from pyro_svi_ext.trace.recorder import SiteRecorder
from pyro_svi_ext.trace.run import TracePair, guess_plate_nesting, run_pair, vectorize_particles
from pyro_svi_ext.trace.sites import Site

__all__ = [
    "Site",
    "SiteRecorder",
    "TracePair",
    "guess_plate_nesting",
    "nonfinite_sites",
    "posterior_trace",
    "run_pair",
    "vectorize_particles",
]
