import pyro
import pytest


@pytest.fixture(autouse=True, scope="session")
def graph_passes_checked():
    """Every graph the suite traces is checked against its unsimplified self."""
    from pyro_svi_ext.compile import verify

    verify.CHECK_PASSES[0] = True
    yield
    verify.CHECK_PASSES[0] = False


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Every test starts with an empty param store and validation on (Pyro's default)."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
