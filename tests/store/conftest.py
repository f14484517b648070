import pytest

from bknr_cluster.store import Store
from tests.store.models import definition


@pytest.fixture
def mem():
    """An in-memory (cluster-mode) store of the test schema."""
    return Store(None, definition=definition)


@pytest.fixture
def disk(tmp_path):
    """A standalone store in a temporary directory; closed at the end of the test."""
    stores = []

    def open_store(path=None, **kw):
        s = Store(path or tmp_path / "store", definition=definition, **kw)
        stores.append(s)
        return s

    yield open_store
    for s in stores:
        s.close()
