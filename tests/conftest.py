import pytest

from tests.support import Processes


@pytest.fixture
def procs():
    """Processes started by a test; every one of them is stopped when the test ends."""
    group = Processes()
    try:
        yield group
    finally:
        group.stop_all()
