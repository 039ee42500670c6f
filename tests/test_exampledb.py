"""A Hypothesis example database that is not a directory (as Redis is), used by the searches through a local copy."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, InMemoryExampleDatabase

from bncheck.exampledb import INDEX, Mirror
from test_pytest_plugin import outcomes, project, pytest_run


def _search(path, limit=1000):
    """A search that fails for n >= limit and records every n it tries (the same database key for every limit)."""
    tried = []

    @settings(database=DirectoryBasedExampleDatabase(path), max_examples=200, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(0, 10_000))
    def search(n):
        tried.append(n)
        assert n < limit
    search._hypothesis_internal_add_digest = b"bncheck:x:forward:0"
    return search, tried


def test_what_one_copy_found_the_next_copy_replays_first_and_a_fixed_failure_is_deleted():
    shared = InMemoryExampleDatabase()
    first = Mirror(shared)
    assert first.pull() == 0
    search, _ = _search(first.path)
    with pytest.raises(AssertionError):
        search()
    saved, deleted = first.push()
    first.close()
    assert saved >= 1 and deleted == 0
    keys = set(shared.fetch(INDEX))
    assert keys and all(set(shared.fetch(k)) for k in keys)
    # the test's key (besides, perhaps, its ".secondary" key: other failing examples it met on the way)
    (primary,) = [k for k in keys if not k.endswith((b".secondary", b".pareto"))]

    second = Mirror(shared)
    assert second.pull() >= 1
    search, tried = _search(second.path)
    with pytest.raises(AssertionError):
        search()
    assert tried[0] == 1000                      # the shrunk failure, replayed before anything is generated
    second.close()

    third = Mirror(shared)                       # the bug is fixed: the stored failure passes, and is deleted
    third.pull()
    search, tried = _search(third.path, limit=10 ** 9)
    search()
    assert tried[0] == 1000
    saved, deleted = third.push()
    third.close()
    assert deleted >= 1
    assert not set(shared.fetch(primary))        # the shrunk failure is gone from the shared database too


SHARED_CONFTEST = '''
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase


class Shared(ExampleDatabase):
    """A database that is not a directory database (a directory stands in for the network store)."""

    def __init__(self, path):
        super().__init__()
        self.store = DirectoryBasedExampleDatabase(path)

    def __repr__(self):
        return "Shared()"

    def fetch(self, key):
        return self.store.fetch(key)

    def save(self, key, value):
        self.store.save(key, value)

    def delete(self, key, value):
        self.store.delete(key, value)


settings.register_profile("shared", database=Shared("network-store"))
'''


def test_the_plugin_searches_a_database_that_is_not_a_directory_through_a_local_copy(tmp_path):
    project(tmp_path, SHARED_CONFTEST)
    r = pytest_run(tmp_path, "--bncheck", "--bncheck-property", "forward", "--bncheck-seed", "3", "-k", "my-noeps",
                   "--hypothesis-profile", "shared")
    assert outcomes(r.stdout) == {"bncheck::my-noeps::forward": "FAILED"}, r.stdout + r.stderr
    assert "Hypothesis database Shared (searched through " in r.stdout
    store = DirectoryBasedExampleDatabase(tmp_path / "network-store")
    keys = set(store.fetch(INDEX))                     # the failure the search saved reached the shared store
    assert keys and any(set(store.fetch(k)) for k in keys), keys
