import pyro
import pytest


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Every test starts with an empty param store and validation on (Pyro's default)."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
