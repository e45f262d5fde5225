"""Extraction through the real thing: CLI → S3 → Redis → a Celery worker with the tiny model →
PostgreSQL; and a schedule over an S3 prefix, fired by the worker's own sweeper."""

from __future__ import annotations

import json
import time
from pathlib import Path

import boto3
from sqlalchemy import create_engine, select

from jobs.db import Item, ItemPage, Schedule
from model.schema import validate_output
from tests.helpers import INVOICE_SCHEMA, image_bytes, write_pdf
from tests.integration.conftest import StartWorker
from tests.integration.conftest import run_cli as cli


def test_extract_job_end_to_end_through_a_real_worker(
    service_env: dict[str, str], start_worker: StartWorker, tmp_path: Path
) -> None:
    env = {**service_env, "LLAVA_BATCH_MAX_NEW_TOKENS": "400"}
    schema = tmp_path / "invoice.schema.json"
    schema.write_text(json.dumps(INVOICE_SCHEMA))
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "invoice.pdf", 2)
    (docs / "receipt.jpg").write_bytes(image_bytes((200, 300), seed=3, fmt="JPEG"))
    cli(env, "db", "upgrade")
    out = cli(env, "submit", "extract", str(docs), "--schema", str(schema), "--json").stdout
    job_id = json.loads(out)["job_id"]
    worker = start_worker(env)
    status = json.loads(cli(env, "status", job_id, "--watch", "--json").stdout.splitlines()[-1])
    assert status["status"] == "completed", worker.log()
    rows = [json.loads(line) for line in cli(env, "results", job_id).stdout.splitlines()]
    assert {Path(r["input"]).name for r in rows} == {"invoice.pdf", "receipt.jpg"}
    for row in rows:
        assert row["status"] == "succeeded", row
        validate_output(INVOICE_SCHEMA, row["result"])
    db = create_engine(env["LLAVA_BATCH_DATABASE_URL"])
    with db.connect() as conn:
        pages = (
            conn.execute(
                select(ItemPage.page_number)
                .join(Item, Item.id == ItemPage.item_id)
                .where(Item.job_id == job_id)
                .order_by(ItemPage.page_number)
            )
            .scalars()
            .all()
        )
    db.dispose()
    assert pages == [1, 2]


def test_schedule_cli_and_firing_by_the_worker_sweeper(
    service_env: dict[str, str], start_worker: StartWorker, tmp_path: Path, s3_bucket: str
) -> None:
    env = {
        **service_env,
        "LLAVA_BATCH_MAX_NEW_TOKENS": "400",
        "LLAVA_BATCH_SWEEP_INTERVAL_SECONDS": "1",
    }
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(INVOICE_SCHEMA))
    s3 = boto3.client("s3")
    s3.put_object(
        Bucket=s3_bucket,
        Key="incoming/one.pdf",
        Body=write_pdf(tmp_path / "one.pdf", 1).read_bytes(),
    )
    cli(env, "db", "upgrade")
    source = f"s3://{s3_bucket}/incoming/"
    cli(
        env,
        "schedule",
        "add",
        "inbox",
        "--source",
        source,
        "--every",
        "1h",
        "--schema",
        str(schema),
    )
    (listed,) = json.loads(cli(env, "schedule", "list", "--json").stdout)
    assert (
        listed["name"] == "inbox"
        and listed["every_seconds"] == 3600
        and listed["last_job_id"] is None
    )

    first = cli(env, "schedule", "run-now", "inbox").stdout.strip()
    assert cli(env, "schedule", "run-now", "inbox").stdout.strip() == ""  # nothing new, no job
    cli(env, "schedule", "pause", "inbox")
    assert json.loads(cli(env, "schedule", "list", "--json").stdout)[0]["paused"] is True
    cli(env, "schedule", "resume", "inbox")

    db = create_engine(env["LLAVA_BATCH_DATABASE_URL"])
    with db.begin() as conn:  # make it due now, so the worker's sweeper fires it
        conn.execute(Schedule.__table__.update().values(next_due_at=Schedule.created_at))
    s3.put_object(
        Bucket=s3_bucket,
        Key="incoming/two.pdf",
        Body=write_pdf(tmp_path / "two.pdf", 1, title="Other Ltd").read_bytes(),
    )
    worker = start_worker(env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        (row,) = json.loads(cli(env, "schedule", "list", "--json").stdout)
        if row["last_job_id"] != first:
            break
        time.sleep(1)
    second = row["last_job_id"]
    assert second and second != first, worker.log()
    for job_id, name in ((first, "one.pdf"), (second, "two.pdf")):
        status = json.loads(cli(env, "status", job_id, "--watch", "--json").stdout.splitlines()[-1])
        assert status["status"] == "completed" and status["total"] == 1
        (result,) = [json.loads(line) for line in cli(env, "results", job_id).stdout.splitlines()]
        assert result["input"] == source + name
    cli(env, "schedule", "remove", "inbox")
    assert json.loads(cli(env, "schedule", "list", "--json").stdout) == []
    db.dispose()
