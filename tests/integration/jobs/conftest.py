from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.db import SessionFactory
from storage import Blobs, open_blobs
from tests.helpers import migrated_session_factory


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    elif "session_factory" in request.fixturenames:
        # session_factory brings the database to head anyway: start from an empty one already
        # there (its upgrade is then a no-op) instead of creating and migrating one per test.
        yield request.getfixturevalue("migrated_pg_url")
    else:
        yield request.getfixturevalue("pg_url")  # empty: the migration tests start from nothing


@pytest.fixture
def session_factory(db_url: str) -> SessionFactory:
    return migrated_session_factory(db_url)


@pytest.fixture
def blobs(tmp_path: Path) -> Blobs:
    return open_blobs(str(tmp_path / "blobs"))
