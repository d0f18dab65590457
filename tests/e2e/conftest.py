"""The end-to-end tests draw their weights and samples from kpu_checks.RNG, reseeded per test."""

import pytest
from kpu_checks import reseed


@pytest.fixture(autouse=True)
def _seeded(request):
    """The weights and samples of a test depend on its name only, not on the tests that ran before."""
    reseed(request.node.name)
