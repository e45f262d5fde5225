"""``submit --reuse`` through the real thing: CLI → Redis → a Celery worker process with the
tiny LLaVA resident → PostgreSQL. The worker's own Prometheus counters show the model did not
run for the copies."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import free_ports, image_bytes, scrape_metrics, write_images
from tests.integration.conftest import StartWorker
from tests.integration.conftest import run_cli as cli


def test_a_resubmitted_catalogue_runs_the_model_for_its_new_photo_only(
    service_env: dict[str, str], start_worker: StartWorker, tmp_path: Path
) -> None:
    catalogue = tmp_path / "catalogue"
    write_images(catalogue, 4)
    port = free_ports(1)
    env = {**service_env, "LLAVA_BATCH_METRICS_PORT": str(port), "LLAVA_BATCH_BATCH_SIZE": "2"}
    cli(env, "db", "upgrade")
    worker = start_worker(env)

    def submit_and_wait(*extra: str) -> dict[str, object]:
        submitted = cli(env, "submit", "caption", str(catalogue), "--json", *extra)
        job_id = json.loads(submitted.stdout)["job_id"]
        done = cli(env, "status", job_id, "--watch", "--json", timeout=240)
        status: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
        assert status["status"] == "completed", worker.log()
        return status

    def counters() -> tuple[float, float, float]:
        scrape = scrape_metrics(port)
        return (
            scrape.get(("llava_batch_generate_duration_seconds_count", frozenset()), 0.0),
            scrape.get(
                (
                    "llava_batch_items_total",
                    frozenset({("kind", "caption"), ("status", "succeeded")}),
                ),
                0.0,
            ),
            scrape.get(
                ("llava_batch_items_total", frozenset({("kind", "caption"), ("status", "reused")})),
                0.0,
            ),
        )

    submit_and_wait()
    calls, ran, reused = counters()
    assert calls > 0 and ran == 4 and reused == 0

    (catalogue / "new.png").write_bytes(image_bytes((36, 52), seed=777))
    status = submit_and_wait("--reuse")
    assert status["reused"] == 4
    after = counters()
    assert after[1:] == (5, 4)  # one more run by the model, four copies
    assert after[0] > calls  # the new photo's generate calls

    status = submit_and_wait("--reuse")  # nothing new: the model is not called at all
    assert status["reused"] == 5 and status["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
    }
    assert counters() == (after[0], 5, 9)
