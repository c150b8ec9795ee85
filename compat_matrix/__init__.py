"""Compatibility matrix: pin inference results across pyro-ppl and torch versions, and
test a migration before making it.

``pyro-svi-ext compat run`` (or ``python -m compat_matrix run``) builds the cells of
``matrix.toml``, runs the pinned scenarios in each and writes a report; ``migrate`` runs
a user's own scenarios (:class:`Scenario`) on two or more sides (pyro version, Pyro's or
the plugin's classes, torch version) and reports what changed; ``suite`` does the same
for a user's pytest suite, per test id.
"""

from compat_matrix.schema import Posterior, Scenario

__all__ = ["Posterior", "Scenario"]
