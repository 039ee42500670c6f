"""A Hypothesis example database that is not a directory, seen by bncheck's searches as one.

bncheck's searches run in worker processes and replay from, and save to, a directory (``search_property(database=
PATH)``). When the Hypothesis profile's database is another kind, e.g. ``hypothesis.extra.redis.RedisExampleDatabase``
shared by several machines, the pytest plugin gives the searches a fresh local directory: ``pull`` copies into it
every entry bncheck stored in the shared database before checking, and ``push`` copies back, after checking, what
the searches saved there and deletes what they deleted. So a failure found on any machine is replayed first by every
later check that pulls.

A database cannot list its keys, so bncheck keeps its own list in the shared database, under ``INDEX``.
"""
from __future__ import annotations

import shutil
import tempfile

from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

INDEX = b"bncheck:keys"
# the entry in which a directory database lists its own keys (Hypothesis 6.126 and later)
_LOCAL_KEYS = getattr(DirectoryBasedExampleDatabase, "_metakeys_name", None)


class Mirror:
    """A local directory standing in for ``shared`` (any ``ExampleDatabase``)."""

    def __init__(self, shared: ExampleDatabase, path: str | None = None):
        if _LOCAL_KEYS is None:
            raise RuntimeError(f"a Hypothesis example database that is not a directory ({shared!r}) needs "
                               f"Hypothesis 6.126 or later to be used by bncheck's searches")
        self.shared = shared
        self.own_dir = path is None
        self.path = path or tempfile.mkdtemp(prefix="bncheck-examples-")
        self.local = DirectoryBasedExampleDatabase(self.path)
        self.pulled: dict[bytes, set[bytes]] = {}

    def __repr__(self) -> str:
        return f"{type(self.shared).__name__} (searched through {self.path})"

    def pull(self) -> int:
        """Copy bncheck's entries of the shared database into the directory; returns how many values."""
        n = 0
        for key in set(self.shared.fetch(INDEX)):
            values = set(self.shared.fetch(key))
            self.pulled[key] = values
            for v in values:
                self.local.save(key, v)
            n += len(values)
        return n

    def push(self) -> tuple[int, int]:
        """Save in the shared database the values the searches added to the directory, and delete those they
        deleted; returns (saved, deleted)."""
        saved = deleted = 0
        for key in set(self.local.fetch(_LOCAL_KEYS)) | set(self.pulled):
            now = set(self.local.fetch(key))
            before = self.pulled.get(key, set())
            if now and key not in self.pulled:
                self.shared.save(INDEX, key)
            for v in now - before:
                self.shared.save(key, v)
            for v in before - now:
                self.shared.delete(key, v)
            saved += len(now - before)
            deleted += len(before - now)
            self.pulled[key] = now
        return saved, deleted

    def close(self) -> None:
        """Remove the directory (when this mirror made it)."""
        if self.own_dir:
            shutil.rmtree(self.path, ignore_errors=True)
