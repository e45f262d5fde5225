"""The ``webhook`` delivery (jobs.delivery.webhook) against a real HTTP receiver on 127.0.0.1,
on SQLite and PostgreSQL: signed as docs/webhooks.md says, one id across tries, retried through
sweeper passes (``run_maintenance``) with the clock moved, the URL checked again at delivery
and the connection made to the address checked, no redirect followed."""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update

from jobs.db import Delivery, DeliveryAttempt, SessionFactory, utcnow
from jobs.delivery import deliver_due
from jobs.delivery.report import deliveries_of
from jobs.delivery.urls import UrlPolicy
from jobs.delivery.webhook import webhook_handler
from jobs.lifecycle import claim_items, finalise_jobs, record_results
from jobs.maintenance import run_maintenance
from jobs.settings import Settings
from storage import Blobs
from tests.helpers import ListPublisher, caption_outcome, submit_captions
from tests.receiver import SECRET, receiver, tls_contexts

ALLOW_LOCAL = UrlPolicy.of(["127.0.0.1", "hooks.test"], ["127.0.0.0/8"])


def _ended_job(sf: SessionFactory, blobs: Blobs, tmp_path: Path, notify_url: str) -> str:
    """A caption job of two items, one succeeded and one failed, ended with ``notify_url``."""
    job_id, ids = submit_captions(
        sf, blobs, tmp_path, n=2, notify_url=notify_url, metadata={"shop": "eu"}
    )
    claimed = claim_items(sf, ids, worker="w", lease_seconds=60)
    record_results(sf, [caption_outcome(claimed[0].id, claimed[0].lease_token)])
    from jobs.lifecycle import ItemOutcome
    from jobs.outcome import Outcome

    record_results(
        sf,
        [
            ItemOutcome(
                claimed[1].id,
                claimed[1].lease_token,
                Outcome(error_code="image_decode_error", error_message="bad"),
            )
        ],
    )
    finalise_jobs(sf, [job_id])
    return job_id


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=url,
        webhook_secret=SECRET,
        webhook_allow_http_hosts=("127.0.0.1",),
        webhook_allow_networks=("127.0.0.0/8",),
    )


def _make_due(sf: SessionFactory, job_id: str) -> None:
    """The clock moved on to the next try (instead of waiting 5 s, then 5 minutes)."""
    with sf.begin() as session:
        session.execute(
            update(Delivery).where(Delivery.job_id == job_id).values(next_attempt_at=utcnow())
        )


def _the_delivery(sf: SessionFactory, job_id: str) -> dict:  # type: ignore[type-arg]
    with sf() as session:
        (row,) = deliveries_of(session, job_id)
    return row


def test_a_signed_webhook_retried_through_sweeper_passes_until_delivered(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, db_url: str
) -> None:
    sf = session_factory
    settings = _settings(tmp_path, db_url)
    with receiver(500, 500) as hook:
        job_id = _ended_job(sf, blobs, tmp_path, hook.url("/in?src=llava"))

        def sweeper_pass() -> int:
            return run_maintenance(sf, blobs, ListPublisher(), settings).delivered

        assert sweeper_pass() == 0  # 500
        assert sweeper_pass() == 0  # not due again yet: no try
        assert len(hook.received) == 1
        _make_due(sf, job_id)
        assert sweeper_pass() == 0  # 500
        _make_due(sf, job_id)
        assert sweeper_pass() == 1  # 200
        _make_due(sf, job_id)
        assert sweeper_pass() == 0  # delivered: never again

    assert len(hook.received) == 3
    row = _the_delivery(sf, job_id)
    # At least once, with a stable id: every try carries the delivery's id.
    assert {r.headers["webhook-id"] for r in hook.received} == {row["id"]}
    assert all(r.verified for r in hook.received)  # the snippet of docs/webhooks.md says so
    assert {r.path for r in hook.received} == {"/in?src=llava"}
    assert {r.headers["content-type"] for r in hook.received} == {"application/json"}
    assert len({r.body for r in hook.received}) == 1  # the same event each time
    event = hook.received[-1].event
    assert event["type"] == "batch.completed"
    data = event["data"]
    assert (data["id"], data["status"], data["kind"], data["metadata"]) == (
        job_id,
        "completed",
        "caption",
        {"shop": "eu"},
    )
    assert data["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    assert (data["counts"]["succeeded"], data["counts"]["failed"]) == (1, 1)
    assert data["usage"]["completion_tokens"] == 2
    assert datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    # What `notifications JOB` shows: each try's status and the receiver's answer.
    assert (row["status"], row["attempts"]) == ("delivered", 3)
    assert [(t["ok"], t["status_code"]) for t in row["tries"]] == [
        (False, 500),
        (False, 500),
        (True, 200),
    ]
    assert row["tries"][0]["detail"] == "HTTP 500: answer 1: 500"
    assert row["tries"][2]["detail"] == "HTTP 200: answer 3: 200"


def test_the_url_is_checked_again_at_delivery_and_connected_to_as_checked(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A name no DNS knows (hooks.test) is delivered to the address the check resolved it to:
    the connection makes no second lookup. When the name resolves to a private address at
    delivery (it did not at submit), nothing is sent and the delivery is given up."""
    sf = session_factory
    resolved = {"hooks.test": "127.0.0.1"}

    def resolver(host: str, port: int) -> list[str]:
        return [resolved[host]]

    send = webhook_handler(sf, secret=SECRET, policy=ALLOW_LOCAL, timeout=5, resolver=resolver)
    with receiver() as hook:
        url = f"http://hooks.test:{hook.port}/h"
        delivered = _ended_job(sf, blobs, tmp_path / "a", url)
        assert deliver_due(sf, {"webhook": send}, among=[delivered]) == 1
        assert len(hook.received) == 1 and hook.received[0].verified

        rebound = _ended_job(sf, blobs, tmp_path / "b", url)
        resolved["hooks.test"] = "10.0.0.7"  # the name now points inside the network
        assert deliver_due(sf, {"webhook": send}, among=[rebound]) == 0
        assert len(hook.received) == 1  # nothing sent
    row = _the_delivery(sf, rebound)
    assert (row["status"], row["attempts"]) == ("abandoned", 1)
    assert "hooks.test (10.0.0.7) is a private address" in row["last_error"]


def test_a_redirect_is_a_failed_try_and_is_not_followed(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    sf = session_factory
    send = webhook_handler(sf, secret=SECRET, policy=ALLOW_LOCAL, timeout=5)
    with receiver() as inside, receiver(302, redirect=inside.url("/admin")) as outside:
        job_id = _ended_job(sf, blobs, tmp_path, outside.url())
        assert deliver_due(sf, {"webhook": send}) == 0
        assert (len(outside.received), len(inside.received)) == (1, 0)
    row = _the_delivery(sf, job_id)
    assert row["status"] == "pending"  # tried again later, as any non-2xx answer
    (tried,) = row["tries"]
    assert tried["status_code"] == 302
    assert tried["detail"] == f"HTTP 302: a redirect (to {inside.url('/admin')}) is not followed"


def test_gone_ends_it_and_other_4xx_are_retried(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    sf = session_factory
    send = webhook_handler(sf, secret=SECRET, policy=ALLOW_LOCAL, timeout=5)
    with receiver(410) as gone, receiver(404) as missing:
        ended = _ended_job(sf, blobs, tmp_path / "a", gone.url())
        retried = _ended_job(sf, blobs, tmp_path / "b", missing.url())
        deliver_due(sf, {"webhook": send})
    assert _the_delivery(sf, ended)["status"] == "abandoned"
    assert _the_delivery(sf, retried)["status"] == "pending"


def test_no_answer_within_the_timeout_is_a_failed_try(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    sf = session_factory
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are accepted by the kernel, and never answered
    try:
        port = silent.getsockname()[1]
        job_id = _ended_job(sf, blobs, tmp_path, f"http://127.0.0.1:{port}/h")
        send = webhook_handler(sf, secret=SECRET, policy=ALLOW_LOCAL, timeout=0.5)
        started = time.monotonic()
        assert deliver_due(sf, {"webhook": send}) == 0
        assert time.monotonic() - started < 5
    finally:
        silent.close()
    row = _the_delivery(sf, job_id)
    assert row["status"] == "pending"
    assert row["last_error"] == "127.0.0.1: no answer within 0.5s"


def test_a_sweeper_without_the_secret_sends_nothing_unsigned(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    sf = session_factory
    with receiver() as hook:
        job_id = _ended_job(sf, blobs, tmp_path, hook.url())
        send = webhook_handler(sf, secret=None, policy=ALLOW_LOCAL, timeout=5)
        assert deliver_due(sf, {"webhook": send}) == 0
        assert hook.received == []
        _make_due(sf, job_id)  # a sweeper that has it delivers
        signed = webhook_handler(sf, secret=SECRET, policy=ALLOW_LOCAL, timeout=5)
        assert deliver_due(sf, {"webhook": signed}) == 1
        assert hook.received[0].verified
    with sf() as session:
        details = session.scalars(select(DeliveryAttempt.detail).order_by(DeliveryAttempt.id))
        assert next(iter(details)) == "LLAVA_BATCH_WEBHOOK_SECRET is not set: not sent"


def test_https_is_verified_for_the_host_name_while_connecting_to_the_checked_address(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """The connection goes to the address the check resolved (127.0.0.1), and TLS still checks
    the certificate against the URL's host name: one for another name is a failed try."""
    sf = session_factory
    server_tls, client_tls = tls_contexts(tmp_path / "tls", "hooks.test")

    def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    send = webhook_handler(
        sf, secret=SECRET, policy=ALLOW_LOCAL, timeout=5, resolver=resolver, tls=client_tls
    )
    with receiver(tls=server_tls) as hook:
        good = _ended_job(sf, blobs, tmp_path / "a", f"https://hooks.test:{hook.port}/h")
        other = _ended_job(sf, blobs, tmp_path / "b", f"https://other.test:{hook.port}/h")
        assert deliver_due(sf, {"webhook": send}, among=[good]) == 1
        assert deliver_due(sf, {"webhook": send}, among=[other]) == 0
        (sent,) = hook.received
    assert sent.verified and sent.event["data"]["id"] == good
    row = _the_delivery(sf, other)
    assert row["status"] == "pending"
    assert "CERTIFICATE_VERIFY_FAILED" in row["last_error"], row["last_error"]


def test_a_receivers_answer_is_kept_without_control_characters(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """What notifications prints comes from the receiver: no escape sequence reaches a terminal."""
    from tests.receiver import Receiver

    sf = session_factory
    send = webhook_handler(sf, secret=SECRET, policy=ALLOW_LOCAL, timeout=5)
    with receiver(500) as hook:
        assert isinstance(hook, Receiver)
        hook.reply = "\x1b[2J\x1b]0;owned\x07 sorry"
        job_id = _ended_job(sf, blobs, tmp_path, hook.url())
        deliver_due(sf, {"webhook": send})
    detail = _the_delivery(sf, job_id)["tries"][0]["detail"]
    assert "\x1b" not in detail and "\x07" not in detail
    assert detail.startswith("HTTP 500: ") and detail.endswith("sorry")


def test_the_next_address_is_tried_only_when_one_refuses_the_connection(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A host of several addresses: one that refuses the connection passes the try to the
    next; one that took the request and did not answer ends it, since the next would get a
    second copy of the same try."""
    sf = session_factory
    order: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        return list(order)

    send = webhook_handler(sf, secret=SECRET, policy=ALLOW_LOCAL, timeout=0.5, resolver=resolver)
    with receiver(host="127.0.0.2") as hook:
        url = f"http://hooks.test:{hook.port}/h"
        order[:] = ["127.0.0.3", "127.0.0.2"]  # nothing listens on the first
        fell_through = _ended_job(sf, blobs, tmp_path / "a", url)
        assert deliver_due(sf, {"webhook": send}, among=[fell_through]) == 1
        assert len(hook.received) == 1

        silent = socket.socket()
        silent.bind(("127.0.0.3", hook.port))
        silent.listen(8)  # takes the connection and never answers
        try:
            order[:] = ["127.0.0.3", "127.0.0.2"]
            timed_out = _ended_job(sf, blobs, tmp_path / "b", url)
            assert deliver_due(sf, {"webhook": send}, among=[timed_out]) == 0
        finally:
            silent.close()
        assert len(hook.received) == 1  # no second copy to the next address
    assert _the_delivery(sf, timed_out)["last_error"] == "127.0.0.3: no answer within 0.5s"


def test_a_receiver_answering_a_byte_at_a_time_is_cut_off_at_the_timeout(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """The timeout bounds the whole exchange, not each wait for a byte: a receiver (anyone who
    may submit names it) that drips its answer would otherwise hold the sweeper, and every
    delivery and sweep behind it, past the delivery's lease, and be sent a second copy."""
    sf = session_factory
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def drip() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)  # the request
            connection.sendall(b"HTTP/1.1 200 OK\r\nx-slow: ")
            for _ in range(100):  # 10 s of headers, a byte every 0.1 s: never 0.5 s silent
                if stop.wait(0.1):
                    return
                connection.sendall(b"a")
            connection.sendall(b"\r\ncontent-length: 0\r\n\r\n")

    dripping = threading.Thread(target=drip, daemon=True)
    dripping.start()
    try:
        port = server.getsockname()[1]
        job_id = _ended_job(sf, blobs, tmp_path, f"http://127.0.0.1:{port}/h")
        send = webhook_handler(sf, secret=SECRET, policy=ALLOW_LOCAL, timeout=0.5)
        started = time.monotonic()
        assert deliver_due(sf, {"webhook": send}) == 0
        took = time.monotonic() - started
    finally:
        stop.set()
        dripping.join(5)
        server.close()
    assert took < 3, took
    row = _the_delivery(sf, job_id)
    assert row["status"] == "pending"
    assert row["last_error"] == "127.0.0.1: no answer within 0.5s"
