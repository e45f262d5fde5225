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
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def session_factory(db_url: str) -> SessionFactory:
    return migrated_session_factory(db_url)


@pytest.fixture
def blobs(tmp_path: Path) -> Blobs:
    return open_blobs(str(tmp_path / "blobs"))
