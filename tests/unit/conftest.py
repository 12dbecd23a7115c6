"""Fixtures of the unit tests."""

import socket

import pytest
from hypothesis import settings

# No example database in the work tree, and no deadline: a loaded CI machine is no bug.
settings.register_profile("replimesh", database=None, deadline=None)
settings.load_profile("replimesh")


@pytest.fixture
def listening_port():
    """A local port that takes connections, for as long as the test runs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]
