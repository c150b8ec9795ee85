"""The pytest plugin under its former name: ``pytest -p pyro_svi_ext.pytest_plugin
--pyro-svi-ext`` still works.

The plugin itself is the top-level module ``_pyro_svi_ext_pytestplugin`` (the
``pytest11`` entry point), which imports nothing of this package unless its options are
given; this module only has pytest load it under its own name (so an autoloaded entry
point does not register it twice).
"""

from __future__ import annotations

#: pytest imports and registers these plugins with this module (not imported here: pytest
#: rewrites a plugin module's asserts only if it imports the module itself)
pytest_plugins = ["_pyro_svi_ext_pytestplugin"]
