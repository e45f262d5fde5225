"""A caption job through the real thing: CLI → S3 (moto server) → Redis → a Celery worker
process with the tiny LLaVA resident → PostgreSQL, read back through the CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tests.helpers import free_ports, image_bytes, scrape_metrics, write_images
from tests.integration.conftest import StartWorker
from tests.integration.conftest import run_cli as cli


def test_caption_job_end_to_end_through_a_real_worker(
    service_env: dict[str, str], start_worker: StartWorker, tmp_path: Path, s3_bucket: str
) -> None:
    import boto3

    s3 = boto3.client("s3")
    for i in range(3):
        s3.put_object(
            Bucket=s3_bucket,
            Key=f"catalogue/2026-11/p{i}.jpg",
            Body=image_bytes((60 + i, 40), seed=100 + i, fmt="JPEG"),
        )
    s3.put_object(Bucket=s3_bucket, Key="catalogue/2026-11/readme.txt", Body=b"not an image")
    local = write_images(tmp_path / "local", 4)
    local[2].write_bytes(local[2].read_bytes()[:60])  # a truncated PNG fails alone

    cli(service_env, "db", "upgrade")
    submitted = cli(
        service_env,
        "submit",
        "caption",
        str(tmp_path / "local"),
        f"s3://{s3_bucket}/catalogue/2026-11/",
        "--json",
    )
    job_id = json.loads(submitted.stdout)["job_id"]
    assert json.loads(submitted.stdout)["items"] == 7

    worker = start_worker(service_env)
    done = cli(service_env, "status", job_id, "--watch", "--json", timeout=240)
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert status["status"] == "completed", worker.log()
    assert status["counts"]["succeeded"] == 6 and status["counts"]["failed"] == 1

    rows = list(
        csv.DictReader(io.StringIO(cli(service_env, "results", job_id, "--format", "csv").stdout))
    )
    by_input = {row["input"]: row for row in rows}
    assert set(by_input) == {str(p) for p in local} | {
        f"s3://{s3_bucket}/catalogue/2026-11/p{i}.jpg" for i in range(3)
    }
    assert by_input[str(local[2])]["error_code"] == "image_decode_error"
    for source, row in by_input.items():
        if source != str(local[2]):
            assert row["status"] == "succeeded" and row["result"].strip(), row
    log = worker.log()
    assert log.count("loading model tiny-llava") == 1  # loaded once, reused by every batch
    # Seven items at LLAVA_BATCH_BATCH_SIZE=4: two batches, each claimed by a doorbell (which
    # names no items, so no "batch received" line) and logged as done by the pipeline.
    assert log.count("batch done job=") >= 2


def test_ask_job_end_to_end_through_a_real_worker(
    service_env: dict[str, str], start_worker: StartWorker, tmp_path: Path
) -> None:
    """Questions per item from a manifest, a conversation of turns, one CSV row per answer."""
    paths = write_images(tmp_path / "photos", 3)
    manifest = tmp_path / "photos" / "ask.jsonl"
    manifest.write_text(
        "\n".join(
            [
                json.dumps({"input": paths[0].name, "id": "sku-0"}),
                json.dumps({"input": paths[1].name, "questions": ["Which brand?"]}),
                json.dumps({"input": paths[2].name}),
            ]
        )
        + "\n"
    )
    cli(service_env, "db", "upgrade")
    questions = ["What is it?", "And its colour?"]
    args = ["submit", "ask", str(manifest), "-q", questions[0], "-q", questions[1]]
    job_id = json.loads(cli(service_env, *args, "--conversation", "--json").stdout)["job_id"]
    worker = start_worker(service_env)
    done = cli(service_env, "status", job_id, "--watch", "--json", timeout=240)
    assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "completed", worker.log()

    lines = cli(service_env, "results", job_id, "--format", "jsonl").stdout.splitlines()
    results = [json.loads(line) for line in lines]
    assert [len(r["result"]) for r in results] == [2, 1, 2]
    assert [a["question"] for a in results[0]["result"]] == questions
    assert results[0]["custom_id"] == "sku-0"
    table = list(
        csv.DictReader(io.StringIO(cli(service_env, "results", job_id, "--format", "csv").stdout))
    )
    assert [(r["custom_id"], r["question_index"], r["question"]) for r in table] == [
        ("sku-0", "0", questions[0]),
        ("sku-0", "1", questions[1]),
        ("", "0", "Which brand?"),
        ("", "0", questions[0]),
        ("", "1", questions[1]),
    ]
    assert all(r["status"] == "succeeded" for r in table)


def test_two_workers_on_one_host_serve_prometheus_metrics_after_a_job(
    service_env: dict[str, str], start_worker: StartWorker, tmp_path: Path
) -> None:
    local = write_images(tmp_path / "local", 4)
    local[3].write_bytes(local[3].read_bytes()[:60])  # fails: image_decode_error
    base = free_ports(2)
    env = {**service_env, "LLAVA_BATCH_METRICS_PORT": str(base), "LLAVA_BATCH_BATCH_SIZE": "2"}
    cli(env, "db", "upgrade")
    first = start_worker(env)
    second = start_worker(env)  # same configured port: it takes the next one
    assert f"metrics served on port {base} " in first.log()
    assert f"metrics served on port {base + 1} " in second.log()

    job_id = json.loads(cli(env, "submit", "caption", str(tmp_path / "local"), "--json").stdout)[
        "job_id"
    ]
    done = cli(env, "status", job_id, "--watch", "--json", timeout=240)
    assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "completed", first.log()

    scrapes = [scrape_metrics(base), scrape_metrics(base + 1)]

    def total(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return sum(scrape.get(key, 0.0) for scrape in scrapes)

    assert total("llava_batch_items_total", kind="caption", status="succeeded") == 3
    assert total("llava_batch_items_total", kind="caption", status="failed") == 1
    assert total("llava_batch_batch_duration_seconds_count", kind="caption") >= 2
    assert total("llava_batch_generate_duration_seconds_count") > 0
    assert total("llava_batch_tokens_generated_total") > 0
    assert total("llava_batch_prompt_tokens_total") > 0
    for scrape in scrapes:  # each worker loaded its model and reads the queue from Redis
        assert scrape[("llava_batch_model_load_seconds", frozenset())] > 0
        queue = frozenset({("queue", "llava-batch.tiny-llava")})  # the model's own queue
        assert scrape[("llava_batch_queue_depth", queue)] == 0


def test_a_worker_works_on_two_messages_at_once_sharing_its_model(
    service_env: dict[str, str], start_worker: StartWorker, tmp_path: Path, pg_url: str
) -> None:
    """The default worker runs LLAVA_BATCH_WORKER_SLOTS (2) messages at once in one process,
    one resident model between them: while one batch generates, the next doorbell has already
    claimed the next batch (tests/integration/jobs/test_overlap.py pins down the order of the
    steps)."""
    import time

    from sqlalchemy import create_engine, text

    cli(service_env, "db", "upgrade")
    write_images(tmp_path / "in", 8)  # two batches of four (LLAVA_BATCH_BATCH_SIZE=4)
    slow = {
        **service_env,
        "LLAVA_BATCH_TEST_FAULTS": json.dumps({"generate_delay_s": 2.0}),
        "LLAVA_BATCH_DECODE_THREADS": "4",  # the worker's total, split between its two slots
    }
    worker = start_worker(slow, "--no-sweep")
    assert "slots=2 decode_threads_per_slot=2" in worker.log(), worker.log()
    job_id = json.loads(
        cli(service_env, "submit", "caption", str(tmp_path / "in"), "--json").stdout
    )["job_id"]
    db = create_engine(pg_url)
    held: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and 2 not in held:
            with db.connect() as conn:
                held.add(
                    conn.execute(
                        text(
                            "select count(distinct lease_token) from items "
                            "where job_id = :job and status = 'running'"
                        ),
                        {"job": job_id},
                    ).scalar_one()
                )
            time.sleep(0.05)
    finally:
        db.dispose()
    assert 2 in held, f"never two messages claimed at once ({held})\n{worker.log()}"
    done = cli(service_env, "status", job_id, "--watch", "--json", timeout=240)
    assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "completed", worker.log()
