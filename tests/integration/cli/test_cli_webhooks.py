"""``--notify`` through the installed CLI, each step a real process, on SQLite and PostgreSQL:
submit refuses what a webhook may not reach with a stable code; a job's end is POSTed to a real
receiver that checks the signature and answers 500 twice, then 200, through ``sweep --once``
passes; ``notifications JOB`` shows the tries; ``schedule add --notify`` gives its jobs the URL;
``run --notify`` delivers when its job ends."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.helpers import write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error
from tests.receiver import SECRET, receiver

WEBHOOKS = {
    "LLAVA_BATCH_WEBHOOK_SECRET": SECRET,
    "LLAVA_BATCH_WEBHOOK_ALLOW_HTTP_HOSTS": "127.0.0.1",
    "LLAVA_BATCH_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
}


@pytest.fixture
def webhook_env(db_env: dict[str, str]) -> dict[str, str]:
    """``db_env`` whose CLI processes may post to the local receiver, with its secret."""
    return {**db_env, **WEBHOOKS}


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def _make_due(webhook_env: dict[str, str]) -> None:
    """The clock moved on to the next try, instead of waiting 5 s, then 5 minutes."""
    engine = create_engine(webhook_env["LLAVA_BATCH_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(text("update deliveries set next_attempt_at = created_at"))
    engine.dispose()


def _sweep(run_cli: RunCli, webhook_env: dict[str, str]) -> dict[str, object]:
    (report,) = _ok(run_cli("sweep", "--once", "--json", env=webhook_env)).splitlines()
    return json.loads(report)  # type: ignore[no-any-return]


def _notifications(run_cli: RunCli, webhook_env: dict[str, str], job_id: str) -> list[dict]:  # type: ignore[type-arg]
    shown = json.loads(_ok(run_cli("notifications", job_id, "--json", env=webhook_env)))
    assert shown["job_id"] == job_id
    return shown["deliveries"]  # type: ignore[no-any-return]


def test_a_job_end_is_posted_signed_and_retried_by_sweeps_until_delivered(
    run_cli: RunCli, webhook_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "imgs", 2)
    with receiver(500, 500) as hook:
        submitted = run_cli(
            "submit", "caption", str(tmp_path / "imgs"), "--notify", hook.url(), "--meta",
            "feed=shop", env=webhook_env,
        )  # fmt: skip
        job_id = _ok(submitted).splitlines()[-1]
        assert _notifications(run_cli, webhook_env, job_id) == []  # nothing until it ends
        assert "has not ended yet" in run_cli("notifications", job_id, env=webhook_env).stderr
        _ok(run_cli("cancel", job_id, env=webhook_env))
        assert _sweep(run_cli, webhook_env)["delivered"] == 0  # ends it, then the first try: 500
        (pending,) = _notifications(run_cli, webhook_env, job_id)
        assert (pending["status"], pending["attempts"]) == ("pending", 1)
        assert pending["next_attempt_at"] is not None
        _make_due(webhook_env)
        assert _sweep(run_cli, webhook_env)["delivered"] == 0  # 500
        _make_due(webhook_env)
        assert _sweep(run_cli, webhook_env)["delivered"] == 1  # 200
        _make_due(webhook_env)
        assert _sweep(run_cli, webhook_env)["delivered"] == 0  # never again

    assert len(hook.received) == 3
    (done,) = _notifications(run_cli, webhook_env, job_id)
    assert {r.headers["webhook-id"] for r in hook.received} == {done["id"]}
    assert all(r.verified for r in hook.received)
    event = hook.received[-1].event
    assert event["type"] == "batch.cancelled"
    assert (event["data"]["id"], event["data"]["status"]) == (job_id, "cancelled")
    assert event["data"]["metadata"] == {"feed": "shop"}
    assert event["data"]["request_counts"]["total"] == 2
    assert (done["what"], done["target"], done["status"], done["attempts"]) == (
        "webhook",
        hook.url(),
        "delivered",
        3,
    )
    assert [t["status_code"] for t in done["tries"]] == [500, 500, 200]
    shown = _ok(run_cli("notifications", job_id, env=webhook_env))
    assert f"webhook {hook.url()} (batch.cancelled, id {done['id']}): delivered, 3 tries" in shown
    assert "HTTP 500: answer 1: 500" in shown and "HTTP 200: answer 3: 200" in shown
    assert_one_line_error(
        run_cli("notifications", "nosuchjob", env=webhook_env), 3, "[job_not_found]"
    )


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        ("https://127.0.0.1/h", "notify_url_not_allowed", "loopback"),
        ("https://localhost:8443/h", "notify_url_not_allowed", "loopback"),
        ("https://[::1]/h", "notify_url_not_allowed", "loopback"),
        ("https://[::ffff:127.0.0.1]/h", "notify_url_not_allowed", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "notify_url_not_allowed", "link-local"),
        ("https://10.0.0.8/h", "notify_url_not_allowed", "private"),
        ("https://192.168.1.10/h", "notify_url_not_allowed", "private"),
        ("http://hooks.example.com/h", "notify_url_not_allowed", "plain http"),
        ("ftp://hooks.example.com/h", "invalid_notify_url", "https://"),
    ],
)
def test_submit_refuses_what_a_webhook_may_not_reach(
    run_cli: RunCli, tmp_path: Path, url: str, code: str, words: str
) -> None:
    write_images(tmp_path / "imgs", 1)
    refused = run_cli(
        "submit", "caption", str(tmp_path / "imgs"), "--notify", url,
        LLAVA_BATCH_WEBHOOK_SECRET=SECRET,
    )  # fmt: skip
    assert_one_line_error(refused, 2, f"[{code}]", words)
    assert "no job" not in refused.stdout and refused.stdout == ""


def test_a_webhook_without_a_secret_is_refused_and_so_is_a_bad_secret(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "imgs", 1)
    source = str(tmp_path / "imgs")
    refused = run_cli("submit", "caption", source, "--notify", "https://93.184.216.34/h")
    assert_one_line_error(refused, 2, "[webhook_secret_missing]", "LLAVA_BATCH_WEBHOOK_SECRET")
    by_default = run_cli(
        "submit", "caption", source, LLAVA_BATCH_NOTIFY_URL="https://[2606:4700::1111]/h"
    )
    assert_one_line_error(by_default, 2, "[webhook_secret_missing]")
    bad = run_cli("submit", "caption", source, LLAVA_BATCH_WEBHOOK_SECRET="hunter2")
    assert_one_line_error(bad, 2, "[invalid_settings]", "LLAVA_BATCH_WEBHOOK_SECRET", "whsec_")
    assert "hunter2" not in bad.stderr


def test_schedule_add_notify_and_the_default_url_give_jobs_their_url(
    run_cli: RunCli, webhook_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "shots", 2)
    with receiver() as hook:
        added = run_cli(
            "schedule", "add", "shots", "caption", str(tmp_path / "shots"), "--every", "1h",
            "--notify", hook.url("/shots"), env=webhook_env,
        )  # fmt: skip
        _ok(added)
        (listed,) = json.loads(_ok(run_cli("schedule", "list", "--json", env=webhook_env)))
        assert listed["notify_url"] == hook.url("/shots")
        job_id = _ok(run_cli("schedule", "run-now", "shots", env=webhook_env)).strip()
        _ok(run_cli("cancel", job_id, env=webhook_env))
        _sweep(run_cli, webhook_env)
    (sent,) = hook.received
    assert sent.verified and sent.path == "/shots"
    assert (sent.event["data"]["id"], sent.event["data"]["name"]) == (job_id, "shots")
    # The deployment's default: a submit that names no --notify tells LLAVA_BATCH_NOTIFY_URL.
    with receiver() as default:
        env = {**webhook_env, "LLAVA_BATCH_NOTIFY_URL": default.url("/default")}
        plain = _ok(run_cli("submit", "caption", str(tmp_path / "shots"), env=env))
        _ok(run_cli("cancel", plain.splitlines()[-1], env=webhook_env))
        _sweep(run_cli, webhook_env)
    (by_default,) = default.received
    assert by_default.verified and by_default.path == "/default"
    assert by_default.event["data"]["id"] == plain.splitlines()[-1]
    refused = run_cli(
        "schedule", "add", "bad", "caption", str(tmp_path / "shots"), "--every", "1h",
        "--notify", "https://10.1.1.1/h", env=webhook_env,
    )  # fmt: skip
    assert_one_line_error(refused, 2, "[notify_url_not_allowed]")


def test_run_notify_delivers_when_its_job_ends_and_leaves_a_failure_to_the_sweeper(
    run_cli: RunCli, webhook_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "imgs", 2)
    with receiver() as hook:
        ran = run_cli(
            "run", "caption", str(tmp_path / "imgs"), "--notify", hook.url(), env=webhook_env
        )
        _ok(ran)
        assert f"webhook delivered to {hook.url()} (HTTP 200: answer 1: 200)" in ran.stderr
        (sent,) = hook.received
        assert sent.verified and sent.event["type"] == "batch.completed"
        assert sent.event["data"]["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        assert sent.event["data"]["usage"]["completion_tokens"] > 0

    _failing_then_swept(run_cli, webhook_env, tmp_path)


def _failing_then_swept(run_cli: RunCli, webhook_env: dict[str, str], tmp_path: Path) -> None:
    """A webhook ``run`` could not deliver is left to the sweeper, which delivers it."""
    write_images(tmp_path / "more", 1)
    with receiver(503) as hook:
        ran = run_cli(
            "run", "caption", str(tmp_path / "more"), "--notify", hook.url(), env=webhook_env
        )
        _ok(ran)
        said = " ".join(ran.stderr.split())
        assert f"webhook to {hook.url()} not delivered yet (HTTP 503: answer 1: 503)" in said
        assert "llava-batch sweep" in said
        _make_due(webhook_env)
        assert _sweep(run_cli, webhook_env)["delivered"] == 1
    assert [r.event["type"] for r in hook.received] == ["batch.completed"] * 2
    assert len({r.headers["webhook-id"] for r in hook.received}) == 1
