"""Fixtures of the renderer's tests."""

import pytest


@pytest.fixture(autouse=True)
def render_on_one_thread(one_thread: None) -> None:
    """Render as a Ray CPU task does, on one torch thread: the kernels are many small ops,
    and on a busy machine two threads' synchronisation made them up to 30× slower."""
