"""Real PostgreSQL and Redis for tests.

PostgreSQL: a fresh database on the server at LLAVA_BATCH_TEST_POSTGRES (default: the local one
on 127.0.0.1:5432); when none answers, a throwaway cluster started with initdb/pg_ctl.
Redis: a throwaway ``redis-server`` on a free port (tests may FLUSHALL or stop it); when the binary
is missing, the server at LLAVA_BATCH_TEST_REDIS (default 127.0.0.1:6379).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_reachable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _pg_binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if found is None:
        pytest.fail(
            f"No PostgreSQL server answers and {name} is not installed: "
            "install PostgreSQL or set LLAVA_BATCH_TEST_POSTGRES."
        )
    return found


def _start_cluster(base: Path) -> Iterator[str]:
    data, port = base / "pgdata", free_port()
    user = "postgres"
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(base, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, _pg_binary("initdb"), "-D", str(data), "-U", user, "-A", "trust"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            _pg_binary("pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(base / "log"),
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://{user}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, _pg_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    dsn = os.environ.get("LLAVA_BATCH_TEST_POSTGRES", DEFAULT_PG)
    if _pg_reachable(dsn):
        yield dsn
        return
    base = tmp_path_factory.mktemp("pg")
    yield from _start_cluster(base)


def create_database(server_dsn: str, template: str | None = None) -> tuple[str, str]:
    """A new database; with ``template``, a copy of that one (which nobody may be connected to)."""
    name = f"llava_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        if template is None:
            conn.execute(f'CREATE DATABASE "{name}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    base = server_dsn.rsplit("/", 1)[0]
    return name, f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)


def drop_database(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name, url = create_database(pg_server)
    yield url
    drop_database(pg_server, name)


class MigratedDatabases:
    """PostgreSQL databases at the newest revision for one session (one pytest process).

    One database is migrated when first asked for; a test gets a free one, emptied with one
    TRUNCATE of every table but alembic_version (its sessions ended first), or, when none is
    free, a copy of the migrated one (CREATE DATABASE ... TEMPLATE). Creating, migrating and
    dropping a database per test cost a second or more each; emptying one costs milliseconds,
    and leaves what a fresh copy has: the schema at head and no rows (no table has a sequence).
    """

    def __init__(self, server_dsn: str) -> None:
        self.server = server_dsn
        self.template: str | None = None
        self.free: list[tuple[str, str]] = []
        self.made: list[str] = []

    def _migrated(self) -> str:
        if self.template is None:
            from jobs.db import make_engine
            from jobs.migrate import upgrade_database

            name, url = create_database(self.server)
            self.made.append(name)
            engine = make_engine(url)
            try:
                upgrade_database(engine)
            finally:
                engine.dispose()  # CREATE DATABASE ... TEMPLATE refuses a template with sessions
            self.template = name
        return self.template

    def take(self) -> tuple[str, str]:
        while self.free:
            name, url = self.free.pop()
            try:
                self._empty(name)
                return name, url
            except psycopg.Error:
                self._drop(name)
        name, url = create_database(self.server, template=self._migrated())
        self.made.append(name)
        return name, url

    def give_back(self, name: str, url: str) -> None:
        self.free.append((name, url))

    def _empty(self, name: str) -> None:
        with psycopg.connect(self.server, autocommit=True) as admin:
            # Whatever the last test left connected (a killed worker's session, an open
            # transaction) holds no lock past this.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        with psycopg.connect(self.server, dbname=name, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            tables = [
                f'"{table}"'
                for (table,) in conn.execute(
                    "SELECT tablename FROM pg_tables "
                    "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
            ]
            conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")

    def _drop(self, name: str) -> None:
        drop_database(self.server, name)
        self.made.remove(name)

    def close(self) -> None:
        for name in list(self.made):
            self._drop(name)


@pytest.fixture(scope="session")
def migrated_databases(pg_server: str) -> Iterator[MigratedDatabases]:
    databases = MigratedDatabases(pg_server)
    yield databases
    databases.close()


@pytest.fixture
def migrated_pg_url(migrated_databases: MigratedDatabases) -> Iterator[str]:
    """A PostgreSQL database for one test, at the newest revision (what ``llava-batch db
    upgrade`` leaves) and empty: see ``MigratedDatabases``. A test that needs a database
    without tables, or runs migrations itself, takes ``pg_url``."""
    name, url = migrated_databases.take()
    yield url
    migrated_databases.give_back(name, url)


class RedisServer:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway Redis with no persistence, stoppable by the test."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; install Redis to run the integration tests.")
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
