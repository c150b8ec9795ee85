"""The user's environment, kept: torch writes into ``os.environ`` as it imports dynamo
(``TORCHINDUCTOR_CACHE_DIR``, when ``torch._dynamo`` or ``torch._inductor`` is first
imported: by a torch optimizer's constructor, by tracing a step, by looking inductor's
cache up) and while inductor compiles and loads a module (its cache directory again, a
pointer for the C++ wrapper). Every subprocess the user starts would inherit them, so
the package does those things with the environment put back afterwards."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def environment_kept() -> Iterator[None]:
    """``os.environ`` as it was before, afterwards (names added are removed, values
    changed or removed are put back)."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for name in [n for n in os.environ if n not in before]:
            del os.environ[name]
        for name, value in before.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


def import_dynamo_keeping_the_environment() -> None:
    """Import ``torch._dynamo`` (which every torch optimizer's constructor and every
    traced step import anyway) now, with the environment kept; no-op once imported."""
    if "torch._dynamo" not in sys.modules:
        with environment_kept():
            import torch._dynamo  # noqa: F401
