"""Two models, one deployment: two real Celery workers, each serving a different offline tiny
model, share one Redis and one PostgreSQL. Each job's model selects its queue; every item must
be produced by the worker serving its job's model, and say so in its row. A job whose model no
worker serves is announced at submit and shown as waiting by ``status``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.helpers import write_images
from tests.integration.conftest import StartWorker
from tests.integration.conftest import run_cli as cli

WAITING = "no live worker serves the model"


def _submit(env: dict[str, str], folder: Path, model: str, *extra: str) -> tuple[str, str]:
    done = cli(env, "submit", "caption", str(folder), "--model", model, *extra)
    return done.stdout.strip(), done.stderr


def _finished(env: dict[str, str], job_id: str) -> dict[str, object]:
    watched = cli(env, "status", job_id, "--watch", "--json", timeout=240)
    return dict(json.loads(watched.stdout.strip().splitlines()[-1]))


def test_each_job_runs_on_a_worker_serving_its_model(
    service_env: dict[str, str], start_worker: StartWorker, tmp_path: Path, pg_url: str
) -> None:
    cli(service_env, "db", "upgrade")
    llava_dir, next_dir = tmp_path / "llava", tmp_path / "next"
    write_images(llava_dir, 5, prefix="l")
    write_images(next_dir, 5, prefix="n")

    # Nobody serves tiny-llava-next yet: submit says so, status shows the job waiting.
    next_job, warned = _submit(service_env, next_dir, "tiny-llava-next")
    assert WAITING in warned and "tiny-llava-next" in warned, warned
    shown = cli(service_env, "status", next_job)
    assert "waiting" in shown.stdout and WAITING in " ".join(shown.stdout.split()), shown.stdout
    as_json = json.loads(cli(service_env, "status", next_job, "--json").stdout)
    assert as_json["waiting_for_worker"] is True

    # Both workers start together (their model loads overlap); each takes only its queue.
    llava = start_worker(
        {**service_env, "LLAVA_BATCH_MODEL": "tiny-llava"}, "--no-sweep", ready=False
    )
    nxt = start_worker(
        {**service_env, "LLAVA_BATCH_MODEL": "tiny-llava-next"}, "--no-sweep", ready=False
    )
    llava.wait_ready()
    nxt.wait_ready()
    llava_job, warned = _submit(service_env, llava_dir, "tiny-llava")
    assert WAITING not in warned, warned
    assert _finished(service_env, llava_job)["status"] == "completed", llava.log()
    assert _finished(service_env, next_job)["status"] == "completed", nxt.log()

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "select j.id, j.model as asked, i.model, i.model_revision, i.quantization, "
                "i.worker from items i join jobs j on j.id = i.job_id"
            )
        ).all()
        live = conn.execute(text("select node, model from workers")).all()
    engine.dispose()
    pid_of = {"tiny-llava": llava.process.pid, "tiny-llava-next": nxt.process.pid}
    assert len(rows) == 10
    for row in rows:
        assert row.model == row.asked, row
        assert row.worker.endswith(f":{pid_of[row.asked]}"), row
        assert row.quantization == "none" and row.model_revision.startswith("local-"), row
    revisions = {row.model: row.model_revision for row in rows}
    assert revisions["tiny-llava"] != revisions["tiny-llava-next"]
    assert {model for _node, model in live} == {"tiny-llava", "tiny-llava-next"}
    exported = cli(service_env, "results", next_job, "--format", "jsonl").stdout.splitlines()
    assert {json.loads(line)["model"] for line in exported} == {"tiny-llava-next"}
    assert "waiting_for_worker" not in json.loads(
        cli(service_env, "status", next_job, "--json").stdout
    )
