"""A sweeper killed (SIGKILL) while it writes a job's results, on SQLite and PostgreSQL, into a
local folder and into S3 (moto's server): a real process runs a maintenance pass
(``tests/delivery_sweeper.py``) and is held at ``delivery:output:file-written``, where a file
is whole but not yet under its name, then killed. Nothing half-written is ever at a final
name; the next pass, once the lease has run out, writes every file once, whole, and leaves no
duplicate object nor temporary file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jobs.db import Delivery, SessionFactory, utcnow
from jobs.delivery import deliver_due
from jobs.delivery.handlers import handlers_for
from jobs.delivery.outbox import lease_for
from jobs.settings import Settings
from jobs.submit.request import SubmitRequest
from model.fake import FakeEngine
from storage import Blobs
from tests.helpers import make_resources, write_images
from workers.local import run_job_locally

ROOT = Path(__file__).resolve().parents[3]


def _ended_job(sf: SessionFactory, blobs: Blobs, tmp_path: Path, target: str) -> str:
    write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    request = SubmitRequest.of("caption", [str(tmp_path / "in")], "tiny-llava", output_uri=target)
    res = make_resources(sf, blobs, FakeEngine(), gpu_batch_size=8)
    return run_job_locally(request, res, max_prompt_chars=4000).job_id


def _sweeper(tmp_path: Path, db_url: str, pause_at_call: int) -> tuple[subprocess.Popen[str], Path]:
    marker = tmp_path / f"paused-{pause_at_call}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LLAVA_BATCH_DATABASE_URL": db_url,
        "LLAVA_BATCH_STORAGE_URL": str(tmp_path / "blobs"),
        "LLAVA_BATCH_HOME": str(tmp_path / "home"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.delivery_sweeper", str(marker), str(pause_at_call)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, marker


def _kill_when_paused(process: subprocess.Popen[str], marker: Path) -> None:
    deadline = time.monotonic() + 60
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the sweeper never paused: {process.communicate()[0]}")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


def _s3_files(s3_client: Any, uri: str) -> dict[str, bytes]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    listed = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert all(o["Key"].startswith(prefix) for o in listed)  # nothing anywhere else
    return {
        o["Key"][len(prefix) :]: s3_client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
    }


def _delivery(sf: SessionFactory, job_id: str) -> Delivery:
    with sf() as session:
        return session.scalars(select(Delivery).where(Delivery.job_id == job_id)).one()


def _check_whole(files: dict[str, bytes], job_id: str) -> None:
    assert set(files) == {"results.jsonl", "errors.jsonl", "manifest.json"}
    manifest = json.loads(files["manifest.json"])
    assert (manifest["job_id"], manifest["results"], manifest["errors"]) == (job_id, 3, 1)
    assert len(files["results.jsonl"].decode().splitlines()) == 3
    assert all(json.loads(line) for line in files["results.jsonl"].decode().splitlines())
    assert len(files["errors.jsonl"].decode().splitlines()) == 1


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("pause_at_call", [1, 2])
def test_a_sweeper_killed_mid_write_leaves_no_partial_file_and_the_next_writes_once(
    session_factory: SessionFactory,
    blobs: Blobs,
    db_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    where: str,
    pause_at_call: int,
) -> None:
    """Killed at the first file (whole, not renamed or uploaded: nothing visible) or at the
    second (the results published, the errors file not): either way the job's folder never
    holds a partial file, and the next pass writes the set once."""
    s3_client = request.getfixturevalue("s3_client") if where == "s3" else None
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        target = f"s3://{bucket}/deliveries/"
    else:
        target = str(tmp_path / "out")
    job_id = _ended_job(session_factory, blobs, tmp_path, target)
    folder = _delivery(session_factory, job_id).target

    def files() -> dict[str, bytes]:
        if s3_client is not None:
            return _s3_files(s3_client, folder)
        return _local_files(Path(folder))

    process, marker = _sweeper(tmp_path, db_url, pause_at_call)
    _kill_when_paused(process, marker)

    seen = files()
    assert "manifest.json" not in seen
    if pause_at_call == 1:
        assert not {n for n in seen if not n.startswith(".")}  # nothing under a final name
    else:
        # The errors file was entered first and closes last: the results are out, whole.
        assert {n for n in seen if not n.startswith(".")} == {"results.jsonl"}
        assert len(seen["results.jsonl"].decode().splitlines()) == 3
    taken = _delivery(session_factory, job_id)
    assert (taken.status, taken.attempts) == ("pending", 1)  # taken, never recorded

    # Before its lease runs out no other pass takes it; after, the next one writes it.
    handlers = handlers_for(session_factory, blobs, Settings())
    assert deliver_due(session_factory, handlers, among=[job_id]) == 0
    assert (
        deliver_due(session_factory, handlers, among=[job_id], now=utcnow() + timedelta(minutes=10))
        == 0
    )  # a webhook's lease would have run out: a big job's write may take that long
    later = utcnow() + lease_for("output") + timedelta(seconds=1)
    assert deliver_due(session_factory, handlers, among=[job_id], now=later) == 1
    _check_whole(files(), job_id)  # (locally: the killed writer's temporary file is gone too)
    done = _delivery(session_factory, job_id)
    assert (done.status, done.attempts) == ("delivered", 2)
    assert done.result is not None and done.result["manifest"] == f"{folder}manifest.json"


def test_a_sweeper_pass_in_its_own_process_writes_the_results(
    session_factory: SessionFactory, blobs: Blobs, db_url: str, tmp_path: Path
) -> None:
    """The same process unpaused: ``run_maintenance`` itself delivers (the sweeper's pass)."""
    job_id = _ended_job(session_factory, blobs, tmp_path, str(tmp_path / "out"))
    process, _ = _sweeper(tmp_path, db_url, 0)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert output.strip().splitlines()[-1] == "1"
    _check_whole(_local_files(Path(_delivery(session_factory, job_id).target)), job_id)
