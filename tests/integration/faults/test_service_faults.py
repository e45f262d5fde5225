"""Fault suite, surroundings: Redis flushed or down, duplicate and pickled messages,
PostgreSQL unreachable during writes, S3 errors, device out of memory."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import boto3
import redis
from celery import Celery
from sqlalchemy.engine import Engine

from jobs.dispatch import RUN_BATCH_TASK, CeleryPublisher
from jobs.fleet import queue_for
from tests.helpers import image_bytes
from tests.integration.conftest import StartWorker
from tests.integration.faults.conftest import (
    DbProxy,
    assert_invariant,
    cli,
    images,
    job_status,
    read_rows,
    submit,
    wait_for,
    whole_log,
    with_faults,
)
from tests.services import RedisServer


def _item_ids(db: Engine, job_id: str) -> list[str]:
    return [r.id for r in read_rows(db, job_id)]


def test_redis_flushall_with_items_queued_and_in_flight(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, tmp_path: Path
) -> None:
    # Batches of 3 s against sweeps every second: after the flush, a sweep finds the queued
    # items without doorbells before a running batch ends and rings again itself (I14), so it
    # is the sweep's repair that is checked, not whichever comes first.
    env = with_faults(fault_env, generate_delay_s=3.0)
    worker = start_worker(env)
    job_id = submit(env, images(tmp_path, 12))
    wait_for(lambda: any(r.status == "running" for r in read_rows(db, job_id)), 60, "a batch")
    before_flush = len(whole_log(worker))
    redis.Redis.from_url(env["LLAVA_BATCH_BROKER_URL"]).flushall()
    wait_for(lambda: job_status(db, job_id) == "completed", 120, "the job", worker.log)
    rows = read_rows(db, job_id)
    assert_invariant(rows, 12)
    assert all(r.status == "succeeded" for r in rows)
    # The flush took the doorbells waiting for the queued batches: a sweep after it found the
    # model's queue short of them and rang again.
    after_flush = whole_log(worker)[before_flush:]
    assert re.search(r"sweep SweepReport\(.*\brung=[1-9]", after_flush), worker.log()


def test_redis_down_during_submit_then_back(
    fault_env: dict[str, str],
    start_worker: StartWorker,
    db: Engine,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    result = cli(fault_env, "submit", "caption", images(tmp_path, 5))
    assert "dispatch pending" in result.stderr
    job_id = result.stdout.strip().splitlines()[-1]
    assert [r.status for r in read_rows(db, job_id)] == ["queued"] * 5
    redis_server.start()
    worker = start_worker(fault_env)
    wait_for(lambda: job_status(db, job_id) == "completed", 90, "the job", worker.log)
    assert_invariant(read_rows(db, job_id), 5)


def test_duplicate_message_and_redelivery_after_visibility_timeout_give_one_result(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, tmp_path: Path
) -> None:
    env = with_faults(
        {
            **fault_env,
            "LLAVA_BATCH_VISIBILITY_TIMEOUT_SECONDS": "2",
            "LLAVA_BATCH_LEASE_SECONDS": "60",
            "LLAVA_BATCH_BATCH_SIZE": "8",
        },
        generate_delay_s=6.0,
    )
    job_id = submit(env, images(tmp_path, 4))
    ids = _item_ids(db, job_id)
    publisher = CeleryPublisher(
        env["LLAVA_BATCH_BROKER_URL"],
        env.get("LLAVA_BATCH_QUEUE", "llava-batch"),
    )
    # The submit rang a doorbell, which claims these four; the same batch named, twice:
    for _ in range(2):
        publisher.publish(job_id, ids, model=env["LLAVA_BATCH_MODEL"])
    first = start_worker(env, "--no-sweep", ready=False)  # started together: loads overlap
    second = start_worker(env, "--no-sweep", ready=False)
    first.wait_ready()
    second.wait_ready()
    wait_for(lambda: job_status(db, job_id) == "completed", 120, "the job", first.log)
    rows = read_rows(db, job_id)
    assert_invariant(rows, 4)
    assert all(r.status == "succeeded" and r.attempts == 1 for r in rows)
    # A duplicate (and any redelivery of the slow batch) found nothing to claim: of the two
    # messages that name the four items, one at least says so with items=4 (a doorbell that
    # finds nothing says items=0).
    wait_for(
        lambda: (
            "nothing to claim (no work, or a duplicate message) items=4"
            in whole_log(first) + whole_log(second)
        ),
        30,
        "the duplicate to find nothing",
        lambda: first.log() + second.log(),
    )
    assert (whole_log(first) + whole_log(second)).count("batch done") == 1


def test_pickled_message_is_refused_not_executed(
    fault_env: dict[str, str],
    start_worker: StartWorker,
    db: Engine,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    job_id = cli(fault_env, "submit", "caption", images(tmp_path, 2)).stdout.split()[-1]
    redis_server.start()
    worker = start_worker(fault_env, "--no-sweep")
    attacker = Celery(broker=fault_env["LLAVA_BATCH_BROKER_URL"])
    attacker.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    attacker.send_task(
        RUN_BATCH_TASK,
        kwargs={"job_id": job_id, "item_ids": _item_ids(db, job_id)},
        queue=queue_for("llava-batch", fault_env["LLAVA_BATCH_MODEL"]),  # the worker's own queue
        serializer="pickle",
    )
    wait_for(
        lambda: "Refusing to deserialize untrusted content of type pickle" in worker.log(),
        30,
        "the refusal",
        worker.log,
    )
    time.sleep(1)
    assert [r.status for r in read_rows(db, job_id)] == ["queued", "queued"]
    assert worker.process.poll() is None  # still up; a JSON message still works:
    CeleryPublisher(fault_env["LLAVA_BATCH_BROKER_URL"], "llava-batch").publish(
        job_id, _item_ids(db, job_id), model=fault_env["LLAVA_BATCH_MODEL"]
    )
    wait_for(lambda: job_status(db, job_id) == "completed", 60, "the job", worker.log)


def test_postgres_unreachable_during_result_writes(
    fault_env: dict[str, str],
    start_worker: StartWorker,
    db: Engine,
    db_proxy: DbProxy,
    tmp_path: Path,
) -> None:
    proxy = db_proxy.proxy
    env = with_faults(
        {
            **fault_env,
            "LLAVA_BATCH_DATABASE_URL": db_proxy.url,
            "LLAVA_BATCH_LEASE_SECONDS": "60",
            "LLAVA_BATCH_BATCH_SIZE": "4",
        },
        generate_delay_s=2.0,
    )
    job_id = submit(env, images(tmp_path, 4))
    worker = start_worker(env)
    wait_for(lambda: all(r.status == "running" for r in read_rows(db, job_id)), 60, "a claim")
    proxy.cut()
    wait_for(
        lambda: "database unreachable, retrying" in whole_log(worker), 30, "a retry", worker.log
    )
    time.sleep(3)
    proxy.restore()
    wait_for(lambda: job_status(db, job_id) == "completed", 60, "the job", worker.log)
    assert worker.process.poll() is None
    rows = read_rows(db, job_id)
    assert_invariant(rows, 4)
    assert all(r.status == "succeeded" and r.attempts == 1 for r in rows)


def test_s3_missing_denied_and_empty_objects_fail_their_items(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, s3_bucket: str
) -> None:
    s3 = boto3.client("s3")
    for name in ("ok.jpg", "gone.jpg", "denied.jpg"):
        s3.put_object(Bucket=s3_bucket, Key=f"cat/{name}", Body=image_bytes((40, 30), 1, "JPEG"))
    s3.put_object(Bucket=s3_bucket, Key="cat/empty.jpg", Body=b"")
    job_id = submit(fault_env, f"s3://{s3_bucket}/cat/")
    s3.delete_object(Bucket=s3_bucket, Key="cat/gone.jpg")
    s3.put_bucket_policy(
        Bucket=s3_bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:GetObject",
                        "Resource": f"arn:aws:s3:::{s3_bucket}/cat/denied.jpg",
                    }
                ],
            }
        ),
    )
    worker = start_worker(fault_env)
    wait_for(lambda: job_status(db, job_id) == "completed", 60, "the job", worker.log)
    rows = read_rows(db, job_id)
    assert_invariant(rows, 4)
    # listing order: denied, empty, gone, ok
    assert [r.error_code for r in rows] == [
        "input_access_denied",
        "empty_input",
        "input_not_found",
        None,
    ]


def test_device_out_of_memory_splits_the_batch(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, tmp_path: Path
) -> None:
    env = with_faults({**fault_env, "LLAVA_BATCH_BATCH_SIZE": "8"}, oom_over_batch=2)
    worker = start_worker(env)
    job_id = submit(env, images(tmp_path, 8))
    wait_for(lambda: job_status(db, job_id) == "completed", 60, "the job", worker.log)
    rows = read_rows(db, job_id)
    assert_invariant(rows, 8)
    assert all(r.status == "succeeded" for r in rows)
    assert "DeviceOutOfMemoryError on a batch of 8; retrying halves" in whole_log(worker)
