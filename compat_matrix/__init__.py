"""Compatibility matrix: pin inference results across pyro-ppl and torch versions.

``python -m compat_matrix run`` builds the cells of ``matrix.toml``, runs the pinned
scenarios in each, and writes a report; ``python -m compat_matrix migrate`` runs a
user's own scenarios in two or more cells and reports what changed.
"""
