"""The pluggy registry: lookup, errors, capabilities, and a real third-party plugin."""

import importlib
import os
import sys
import textwrap
import warnings

import pytest

import pyro_svi_ext
from pyro_svi_ext import registry
from pyro_svi_ext.registry import (
    Capabilities,
    DuplicateEstimatorError,
    EstimatorRegistry,
    PluginLoadWarning,
    PluginRegistrar,
    UnknownEstimatorError,
)


@pytest.fixture
def plugin_dir(tmp_path):
    """A directory on ``sys.path`` for fake installed plugins; afterwards the path, the
    imported plugin modules and the registry are restored."""
    sys.path.insert(0, str(tmp_path))
    saved_env = os.environ.pop(registry.DISABLE_AUTOLOAD_ENV, None)
    modules_before = set(sys.modules)
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in set(sys.modules) - modules_before:
        if name.startswith("svi_ext_"):
            del sys.modules[name]
    if saved_env is not None:
        os.environ[registry.DISABLE_AUTOLOAD_ENV] = saved_env
    importlib.invalidate_caches()
    registry.reload()


@pytest.mark.parametrize("name", ["Trace_ELBO", "trace_elbo", "TRACE_ELBO", "trace-elbo"])
def test_lookup_by_canonical_name_and_alias_is_case_insensitive(name):
    assert pyro_svi_ext.get(name) is pyro_svi_ext.Trace_ELBO


def test_make_passes_arguments():
    elbo = pyro_svi_ext.make("trace_elbo", num_particles=3)
    assert isinstance(elbo, pyro_svi_ext.Trace_ELBO)
    assert elbo.num_particles == 3


def test_unknown_name_is_a_key_error_with_close_matches():
    with pytest.raises(UnknownEstimatorError) as info:
        pyro_svi_ext.get("trace_elbow")
    assert isinstance(info.value, KeyError)
    assert info.value.matches[0] == "Trace_ELBO"
    assert "did you mean Trace_ELBO" in str(info.value)


def test_unknown_name_without_close_match_lists_registered():
    with pytest.raises(KeyError, match=r"registered: .*Trace_ELBO"):
        pyro_svi_ext.get("hamiltonian")


def test_available_reports_capabilities_signature_and_plugin():
    (reg,) = [r for r in pyro_svi_ext.available() if r.name == "Trace_ELBO"]
    assert reg.cls is pyro_svi_ext.Trace_ELBO
    assert reg.aliases == ("trace_elbo",)
    assert reg.capabilities.reparam and reg.capabilities.nonreparam
    assert not reg.capabilities.enumeration
    assert reg.plugin == registry.BUILTIN_PLUGIN
    assert reg.signature.startswith("Trace_ELBO(num_particles")
    assert "vectorize_particles" in reg.signature


def test_two_plugins_claiming_one_name_are_both_named():
    reg = EstimatorRegistry()
    PluginRegistrar("first_plugin", reg).add(pyro_svi_ext.Trace_ELBO)
    first = PluginRegistrar("first_plugin", reg)
    first.add(pyro_svi_ext.Trace_ELBO, name="Mine")
    reg.add(first.staged[0])
    second = PluginRegistrar("second_plugin", reg)
    with pytest.raises(DuplicateEstimatorError) as info:
        second.add(pyro_svi_ext.Trace_ELBO, name="other", aliases=("MINE",))
    assert "first_plugin" in str(info.value) and "second_plugin" in str(info.value)


def _write_plugin(tmp_path, dist_name, module, body):
    """A minimal installed distribution: a module plus dist-info with an entry point."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
    info = tmp_path / f"{dist_name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[pyro_svi_ext]\n{module} = {module}\n")


GOOD_PLUGIN = """
    import pyro_svi_ext
    from pyro_svi_ext.registry import Capabilities

    class Scaled_ELBO(pyro_svi_ext.Trace_ELBO):
        '''Trace_ELBO times two: a stand-in third-party estimator.'''

        def particle_elbo(self, pair):
            return 2 * super().particle_elbo(pair)

    @pyro_svi_ext.hookimpl
    def pyro_svi_ext_register_estimators(registry):
        registry.add(Scaled_ELBO, aliases=("scaled",),
                     capabilities=Capabilities(nonreparam=False))
"""


def test_third_party_plugin_is_found_through_its_entry_point(plugin_dir):
    _write_plugin(plugin_dir, "svi_ext_good", "svi_ext_good_plugin", GOOD_PLUGIN)
    registry.reload()
    cls = pyro_svi_ext.get("SCALED")
    assert cls.__name__ == "Scaled_ELBO"
    (reg,) = [r for r in pyro_svi_ext.available() if r.name == "Scaled_ELBO"]
    assert reg.plugin == "svi_ext_good:svi_ext_good_plugin"
    assert reg.capabilities == Capabilities(nonreparam=False)
    assert pyro_svi_ext.get("trace_elbo") is pyro_svi_ext.Trace_ELBO


def test_autoload_can_be_disabled(plugin_dir, monkeypatch):
    _write_plugin(plugin_dir, "svi_ext_good", "svi_ext_good_plugin", GOOD_PLUGIN)
    monkeypatch.setenv(registry.DISABLE_AUTOLOAD_ENV, "1")
    registry.reload()
    with pytest.raises(UnknownEstimatorError):
        pyro_svi_ext.get("scaled")


BROKEN_IMPORT = "raise ImportError('missing dependency of the plugin')\n"
BROKEN_HOOK = """
    import pyro_svi_ext

    @pyro_svi_ext.hookimpl
    def pyro_svi_ext_register_estimators(registry):
        registry.add(pyro_svi_ext.Trace_ELBO, name="HalfRegistered")
        raise RuntimeError("boom while registering")
"""
MISSPELLED_HOOK = """
    import pyro_svi_ext

    @pyro_svi_ext.hookimpl
    def pyro_svi_ext_register_estimator(registry):
        pass
"""
DUPLICATE = """
    import pyro_svi_ext

    @pyro_svi_ext.hookimpl
    def pyro_svi_ext_register_estimators(registry):
        registry.add(pyro_svi_ext.Trace_ELBO, aliases=("trace_elbo",))
"""

#: plugins that end the process unless the registry stops them: sys.exit at import, an
#: argparse that reads the host's argv at import, a hook that exits, a BaseException
EXITS_AT_IMPORT = "import sys\nsys.exit(3)\n"
PARSES_ARGV_AT_IMPORT = """
    import argparse

    argparse.ArgumentParser(prog="svi_ext_bad_plugin").add_argument("--required-by-plugin",
                                                                   required=True)
    argparse.ArgumentParser(prog="svi_ext_bad_plugin").parse_args(["--unknown-option"])
"""
HOOK_EXITS = """
    import sys

    import pyro_svi_ext

    @pyro_svi_ext.hookimpl
    def pyro_svi_ext_register_estimators(registry):
        sys.exit("plugin gave up")
"""
BACKEND_HOOK_RAISES_BASE_EXCEPTION = """
    import pyro_svi_ext

    class PluginAbort(BaseException):
        pass

    @pyro_svi_ext.hookimpl
    def pyro_svi_ext_register_backends(registry):
        raise PluginAbort("not an Exception")
"""


@pytest.mark.parametrize(
    "body, message",
    [(BROKEN_IMPORT, "missing dependency"), (BROKEN_HOOK, "boom while registering"),
     (MISSPELLED_HOOK, "pyro_svi_ext_register_estimator"),
     (DUPLICATE, "already registered as 'Trace_ELBO' by plugin 'pyro_svi_ext.builtin'"),
     (EXITS_AT_IMPORT, "SystemExit: 3"), (PARSES_ARGV_AT_IMPORT, "SystemExit: 2"),
     (HOOK_EXITS, "SystemExit: plugin gave up"),
     (BACKEND_HOOK_RAISES_BASE_EXCEPTION, "PluginAbort: not an Exception")],
    ids=["import-error", "hook-raises", "misspelled-hook", "duplicate-name", "exit-at-import",
         "argparse-at-import", "hook-exits", "backend-hook-base-exception"],
)
def test_a_failing_plugin_is_named_and_the_others_still_load(plugin_dir, body, message):
    _write_plugin(plugin_dir, "svi_ext_bad", "svi_ext_bad_plugin", body)
    _write_plugin(plugin_dir, "svi_ext_good", "svi_ext_good_plugin", GOOD_PLUGIN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.reload()
    (error,) = registry.load_errors()
    assert error.plugin == "svi_ext_bad:svi_ext_bad_plugin"
    assert message in str(error)
    assert any(issubclass(w.category, PluginLoadWarning) and "svi_ext_bad" in str(w.message)
               for w in caught)
    assert pyro_svi_ext.get("scaled").__name__ == "Scaled_ELBO"
    assert pyro_svi_ext.get("trace_elbo") is pyro_svi_ext.Trace_ELBO
    with pytest.raises(UnknownEstimatorError):
        pyro_svi_ext.get("HalfRegistered")  # a failed plugin keeps nothing


def test_a_keyboard_interrupt_in_a_plugin_is_the_users_and_goes_on(plugin_dir):
    _write_plugin(plugin_dir, "svi_ext_bad", "svi_ext_bad_plugin",
                  "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        registry.reload()


def test_registry_is_clean_after_plugin_tests():
    names = {r.name for r in pyro_svi_ext.available()}
    assert "Trace_ELBO" in names and "Scaled_ELBO" not in names
    assert registry.load_errors() == []


def test_every_hook_is_documented():
    from pyro_svi_ext import hookspecs

    hooks = [n for n in dir(hookspecs) if n.startswith("pyro_svi_ext_")]
    assert hooks == ["pyro_svi_ext_register_backends", "pyro_svi_ext_register_estimators"]
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__
        assert doc and "Called" in doc and "Returns" in doc


# --- plugin authoring --------------------------------------------------------------------
def _plugin(register):
    import types

    return types.SimpleNamespace(__name__="authoring_probe",
                                 pyro_svi_ext_register_estimators=register)


def test_a_class_that_is_not_an_estimator_is_refused_naming_the_plugin():
    @pyro_svi_ext.hookimpl
    def register(registry):
        registry.add(dict, name="not_an_elbo")

    try:
        with pytest.warns(PluginLoadWarning, match="authoring_probe.*not an estimator"):
            registry.reload(extra_plugins=[_plugin(register)])
        assert [e.plugin for e in registry.load_errors()] == ["authoring_probe"]
        with pytest.raises(UnknownEstimatorError, match="failed to load: authoring_probe"):
            pyro_svi_ext.get("not_an_elbo")
    finally:
        registry.reload()


def test_a_hook_without_hookimpl_is_a_warning_pointing_at_the_plugin():
    def pyro_svi_ext_register_estimators(registry):  # the decorator forgotten
        raise AssertionError("never called")

    with pytest.warns(PluginLoadWarning, match="not decorated with @pyro_svi_ext.hookimpl") \
            as seen:
        registry.reload(extra_plugins=[_plugin(pyro_svi_ext_register_estimators)])
    registry.reload()
    (warning,) = [w for w in seen if "not decorated" in str(w.message)]
    assert warning.filename == __file__  # the plugin's code, not the registry's


def test_declared_capabilities_are_enforced_on_a_model_they_exclude():
    import pyro
    import pyro.distributions as dist
    import torch

    class PathwiseOnly(pyro_svi_ext.Trace_ELBO):
        pass

    @pyro_svi_ext.hookimpl
    def register(registry):
        registry.add(PathwiseOnly, capabilities=Capabilities(nonreparam=False))

    def model():
        pyro.sample("k", dist.Bernoulli(0.3))

    def guide():
        pyro.sample("k", dist.Bernoulli(pyro.param("q", torch.tensor(0.5))))

    try:
        registry.reload(extra_plugins=[_plugin(register)])
        elbo = pyro_svi_ext.make("PathwiseOnly")
        with pytest.raises(ValueError, match=r"no support for non-reparameterized.*'k'"):
            elbo.loss(model, guide)
        assert pyro_svi_ext.Trace_ELBO().loss(model, guide) is not None  # built-in: fine
    finally:
        registry.reload()


@pytest.mark.parametrize("bad", [None, 3, pyro_svi_ext.Trace_ELBO])
def test_a_name_that_is_not_a_string_is_a_type_error(bad):
    with pytest.raises(TypeError, match="estimator name must be a str"):
        pyro_svi_ext.get(bad)
