"""The review page's server through its ASGI app (docs/review.md) on both databases: the jobs
page (progress, cancel and retry with the CLI's functions and words), the fleet page, and the
security model: CSRF and Origin on every POST, loopback host names only, a strict CSP, the
token's login and cookie."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.fleet import Serving, beat_worker
from jobs.lifecycle import claim_items, record_results
from jobs.outcome import ItemOutcome, Outcome
from jobs.review import ItemFilter, item_detail, list_items
from jobs.web.security import CONTENT_SECURITY_POLICY, session_value
from storage import Blobs
from tests.helpers import caption_outcome, make_settings, submit_captions
from tests.integration.cli.conftest import RunCli
from tests.integration.web.conftest import BASE, ReviewJob, post

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
TEMPLATES = Path(__file__).resolve().parents[3] / "jobs" / "web" / "templates"


def _half_done(sf: SessionFactory, blobs: Blobs, tmp_path: Path) -> str:
    job_id, ids = submit_captions(sf, blobs, tmp_path, n=4)
    claimed = claim_items(sf, ids[:2], worker="w", lease_seconds=60)
    record_results(sf, [caption_outcome(c.id, c.lease_token) for c in claimed])
    return job_id


def _flash(page: str) -> list[str]:
    return re.findall(r'<p class="flash[^"]*" role="status">([^<]*)</p>', page)


def test_the_jobs_page_shows_progress_and_refreshes_while_a_job_runs(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, client: TestClient
) -> None:
    job_id = _half_done(session_factory, blobs, tmp_path)
    deadline = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)
    with session_factory.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(expires_at=deadline, retain_seconds=30 * 86400, priority=7)
        )
    page = client.get("/").text
    row = page[page.index(f'id="job-{job_id}"') :].split("</tr>")[0]
    assert '<progress max="4" value="2">' in row
    assert "<td>2031-05-04 03:02:01 UTC</td>" in row  # its completion window's deadline
    assert "<td>30d after it ends</td>" in row  # its retention
    assert "<td>7</td>" in row  # its priority
    assert "2 / 4 · queued 2 · succeeded 2" in row
    assert "/s</td>" in row  # its rate
    assert 'http-equiv="refresh"' in page
    assert f'action="/jobs/{job_id}/cancel"' in row
    assert "/retry" not in row  # nothing failed or expired to retry


def test_cancel_and_retry_say_what_the_cli_says(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    client: TestClient,
    db_url: str,
    run_cli: RunCli,
) -> None:
    job_id = _half_done(session_factory, blobs, tmp_path)
    response = post(client, f"/jobs/{job_id}/cancel")
    assert response.status_code == 303
    page = client.get("/").text
    assert _flash(page) == [f"job {job_id}: cancelled"]
    assert _flash(client.get("/").text) == []  # shown once
    with session_factory() as session:
        assert session.get(Job, job_id).status == "cancelled"  # type: ignore[union-attr]
    assert 'http-equiv="refresh"' not in page  # nothing runs now
    post(client, f"/jobs/{job_id}/retry")
    shown = _flash(client.get("/").text)
    storage = str(tmp_path / "blobs")
    cli = run_cli("retry", job_id, LLAVA_BATCH_DATABASE_URL=db_url, LLAVA_BATCH_STORAGE_URL=storage)
    assert cli.returncode == 2, cli.stderr
    assert shown == [cli.stderr.strip().splitlines()[-1]]
    assert "[job_cancelled]" in shown[0]


def test_retry_requeues_what_the_cli_requeues(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, client: TestClient
) -> None:
    job_id, ids = submit_captions(session_factory, blobs, tmp_path, n=3)
    claimed = claim_items(session_factory, ids, worker="w", lease_seconds=60)
    codes = ["worker_lost", "image_decode_error", None]
    record_results(
        session_factory,
        [
            ItemOutcome(c.id, c.lease_token, Outcome(error_code=code, error_message="x"))
            if code
            else caption_outcome(c.id, c.lease_token)
            for c, code in zip(claimed, codes, strict=True)
        ],
    )
    page = client.get("/").text
    row = page[page.index(f'id="job-{job_id}"') :].split("</tr>")[0]
    assert f'action="/jobs/{job_id}/retry"' in row
    post(client, f"/jobs/{job_id}/retry")
    assert _flash(client.get("/").text) == [
        f"job {job_id}: 1 failed or expired item(s) re-queued "
        "(broker unreachable: the sweeper will dispatch)",
        f"job {job_id}: 1 failed item(s) skipped, their failure would repeat "
        "(image_decode_error 1); --all re-queues them too",
    ]
    with session_factory() as session:
        queued = session.scalar(
            select(func.count()).where(Item.job_id == job_id, Item.status == "queued")
        )
    assert queued == 1


def test_the_fleet_page_shows_workers_backlog_rate_and_failures(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, client: TestClient
) -> None:
    _, ids = submit_captions(session_factory, blobs, tmp_path, n=5)
    beat_worker(session_factory, "gpu-node-7", Serving("fake", "rev-1", "none"))
    beat_worker(
        session_factory,
        "gone-node",
        Serving("fake", None, "none"),
        now=utcnow() - timedelta(hours=1),
    )
    claimed = claim_items(session_factory, ids[:2], worker="w", lease_seconds=60)
    record_results(
        session_factory,
        [
            ItemOutcome(c.id, c.lease_token, Outcome(error_code="image_decode_error"))
            for c in claimed
        ],
    )
    page = client.get("/fleet").text
    row = page[page.index('data-model="fake"') :].split("</tr>")[0]
    assert "gpu-node-7 @ rev-1" in row and "gone-node" not in row
    assert '<td class="backlog">3</td>' in row
    assert "image_decode_error 2" in row
    rate = re.search(r'<td class="rate">([0-9.]+)</td>', row)
    assert rate and float(rate.group(1)) > 0


@SQLITE_ONLY
def test_a_post_without_the_csrf_token_or_from_another_site_is_refused(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, client: TestClient
) -> None:
    job_id = _half_done(session_factory, blobs, tmp_path)
    url = f"/jobs/{job_id}/cancel"
    token = client.cookies.get("llava_batch_csrf") or ""
    refused = [
        client.post(url, data={}, headers={"origin": BASE}),
        client.post(url, data={"csrf": token + "x"}, headers={"origin": BASE}),
        client.post(url, data={"csrf": token}, headers={"origin": "https://evil.example"}),
        client.post(url, data={"csrf": token}),  # neither Origin nor Referer
    ]
    assert [r.status_code for r in refused] == [403, 403, 403, 403]
    with session_factory() as session:
        assert session.get(Job, job_id).status == "in_progress"  # type: ignore[union-attr]
    accepted = client.post(
        url, data={"csrf": token}, headers={"referer": BASE + "/"}, follow_redirects=False
    )
    assert accepted.status_code == 303


@SQLITE_ONLY
def test_on_loopback_only_loopback_host_names_are_answered(client: TestClient) -> None:
    """A DNS rebinding page (evil.example resolving to 127.0.0.1) reads nothing."""
    assert client.get("/", headers={"host": "evil.example"}).status_code == 421
    assert client.get("/", headers={"host": "localhost:8000"}).status_code == 200


@SQLITE_ONLY
def test_a_host_name_that_only_looks_like_loopback_is_not_answered(client: TestClient) -> None:
    """A rebinding name under the attacker's domain may well start with "127.": it is a name,
    not a loopback address, and is answered 421 like any other."""
    for host in ("127.attacker.example", "127.0.0.1.nip.io:8000", "localhost.attacker.example"):
        assert client.get("/", headers={"host": host}).status_code == 421, host
    for host in ("127.0.0.2:8000", "[::1]:8000"):
        assert client.get("/", headers={"host": host}).status_code == 200, host


@SQLITE_ONLY
def test_every_response_carries_a_strict_content_security_policy(client: TestClient) -> None:
    for url in ("/", "/fleet", "/static/review.js", "/no/such/page"):
        headers = client.get(url).headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, url
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    # and the templates need nothing else: no inline script, no event handler attribute
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template
        assert not re.search(r"\son[a-z]+\s*=", text), template
        assert "|safe" not in text and "autoescape false" not in text, template


SITE = "https://review.example.com"
STRICT_COOKIE = ("HttpOnly", "Secure", "SameSite=strict", "Path=/")


def _sign_in(client: TestClient, token: str) -> Any:
    """POSTs ``token`` to the login page as a browser of ``SITE`` does: its CSRF field, its
    Origin."""
    csrf = client.cookies.get("llava_batch_csrf") or ""
    return client.post(
        "/login",
        data={"csrf": csrf, "token": token},
        headers={"origin": SITE},
        follow_redirects=False,
    )


def _token_app(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, **options: Any
) -> Any:
    """The review page off loopback, guarded by the token ``s3cret-token``."""
    from jobs.web.app import create_app

    settings = make_settings(home=tmp_path / "home", serve_token="s3cret-token")
    return create_app(
        settings, session_factory, blobs, reviewer="ada", loopback_only=False, **options
    )


@SQLITE_ONLY
def test_with_a_token_the_page_asks_for_it_once_and_keeps_a_strict_cookie(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    with TestClient(_token_app(session_factory, blobs, tmp_path), base_url=SITE) as client:
        first = client.get("/", follow_redirects=False)
        assert (first.status_code, first.headers["location"]) == (303, "/login")
        assert client.get("/fleet", follow_redirects=False).status_code == 303
        assert client.get("/items/x/thumb", follow_redirects=False).status_code == 303
        csrf = client.cookies.get("llava_batch_csrf") or ""
        origin = {"origin": SITE}
        assert client.post("/jobs/x/cancel", data={"csrf": csrf}, headers=origin).status_code == 401
        assert _sign_in(client, "guess").status_code == 401
        right = _sign_in(client, "s3cret-token")
        assert right.status_code == 303
        cookie = right.headers["set-cookie"]
        assert cookie.startswith(f"llava_batch_session={session_value('s3cret-token')};")
        assert "s3cret-token" not in cookie
        for attribute in STRICT_COOKIE:
            assert attribute in cookie, cookie
        assert client.get("/").status_code == 200
        # any host name: off loopback the token is the guard
        assert client.get("/fleet").status_code == 200


@SQLITE_ONLY
def test_signing_out_ends_the_session_and_wants_the_csrf_field(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    with TestClient(_token_app(session_factory, blobs, tmp_path), base_url=SITE) as client:
        client.get("/login")
        csrf = client.cookies.get("llava_batch_csrf") or ""
        origin = {"origin": SITE}
        assert _sign_in(client, "s3cret-token").status_code == 303
        page = client.get("/fleet")
        assert page.status_code == 200
        # on every page, as a form (a GET link could be followed by another site's page)
        assert '<form class="sign-out" method="post" action="/logout">' in page.text
        assert 'action="/logout"' not in client.get("/login").text
        for refused in (
            client.post("/logout", data={}, headers=origin),
            client.post("/logout", data={"csrf": csrf}, headers={"origin": "https://evil.example"}),
        ):
            assert refused.status_code == 403
        assert client.get("/", follow_redirects=False).status_code == 200  # still signed in
        out = client.post("/logout", data={"csrf": csrf}, headers=origin, follow_redirects=False)
        assert (out.status_code, out.headers["location"]) == (303, "/login")
        cookie = out.headers["set-cookie"]
        assert cookie.startswith('llava_batch_session="";') and "Max-Age=0" in cookie, cookie
        for attribute in STRICT_COOKIE:
            assert attribute in cookie, cookie
        again = client.get("/", follow_redirects=False)
        assert (again.status_code, again.headers["location"]) == (303, "/login")


class Clock:
    """A monotonic clock the test moves: the throttle's window passes without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@SQLITE_ONLY
def test_wrong_tokens_are_throttled_per_address_without_checking_the_token(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    from jobs.web.throttle import LoginThrottle

    clock = Clock()
    app = _token_app(session_factory, blobs, tmp_path, login_throttle=LoginThrottle(clock=clock))
    guesser = TestClient(app, base_url=SITE, client=("203.0.113.7", 40000))
    colleague = TestClient(app, base_url=SITE, client=("198.51.100.2", 40000))
    for client in (guesser, colleague):
        client.get("/login")
    for _ in range(5):
        assert _sign_in(guesser, "guess").status_code == 401
        clock.now += 1
    # a colleague signing in meanwhile neither suffers from it nor resets the guesser's count
    assert _sign_in(colleague, "s3cret-token").status_code == 303
    refused = _sign_in(guesser, "s3cret-token")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "55"  # the first failure is 5 s old
    assert "wait 55 seconds" in refused.text
    assert "llava_batch_session" not in guesser.cookies
    clock.now += 54
    assert _sign_in(guesser, "s3cret-token").status_code == 429
    clock.now += 1  # the first failure is 60 s old: one guess more is allowed, not five
    assert _sign_in(guesser, "guess").status_code == 401
    assert _sign_in(guesser, "guess").status_code == 429
    clock.now += 60
    assert _sign_in(guesser, "s3cret-token").status_code == 303
    assert guesser.get("/", follow_redirects=False).status_code == 200


def test_the_throttles_table_of_addresses_is_bounded() -> None:
    from jobs.web.throttle import MAX_ADDRESSES, LoginThrottle

    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(5):
        throttle.failed("192.0.2.1")
    # a flood of addresses, each failing once: the table stays at its bound, dropping the
    # least recently failed first
    for n in range(MAX_ADDRESSES + 500):
        throttle.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        if n == MAX_ADDRESSES // 2:
            assert throttle.wait_seconds("192.0.2.1") == 60
    assert throttle.addresses() == MAX_ADDRESSES
    assert throttle.wait_seconds("192.0.2.1") == 0
    assert throttle.wait_seconds("10.0.0.0") == 0


def test_an_ipv6_host_is_counted_by_its_64() -> None:
    """One host commonly holds a whole /64: a fresh address per guess must not help it."""
    from jobs.web.throttle import LoginThrottle

    throttle = LoginThrottle(clock=Clock())
    for n in range(5):
        throttle.failed(f"2001:db8:1:2::{n + 1:x}")
    assert throttle.wait_seconds("2001:db8:1:2:ffff::9") == 60
    assert throttle.wait_seconds("2001:db8:1:3::1") == 0
    for _ in range(5):
        throttle.failed("::ffff:192.0.2.9")  # an IPv4 client of a dual-stack socket
    assert throttle.wait_seconds("192.0.2.9") == 60


@SQLITE_ONLY
def test_without_a_token_no_page_offers_to_sign_out(client: TestClient) -> None:
    assert "/logout" not in client.get("/").text


def test_bulk_decisions_touch_the_filtered_view_only(
    session_factory: SessionFactory, client: TestClient, review_job: ReviewJob
) -> None:
    job_id = review_job.job_id
    response = post(
        client,
        f"/jobs/{job_id}/decide",
        status="failed",
        code="image_decode_error",
        decision="rejected",
    )
    assert response.headers["location"] == (f"/jobs/{job_id}?status=failed&code=image_decode_error")
    assert _flash(client.get(f"/jobs/{job_id}").text) == ["6 item(s) rejected by ada"]
    rows = list_items(session_factory, job_id, ItemFilter()).rows
    rejected = {r.item_id for r in rows if r.decision == "rejected"}
    assert rejected == {r.item_id for r in rows if r.error_code == "image_decode_error"}
    assert {r.decision for r in rows if r.item_id not in rejected} == {None}
    assert post(client, f"/jobs/{job_id}/decide", decision="maybe").status_code == 400
    assert client.get(f"/jobs/{job_id}?status=nonsense").status_code == 400


def _extract_job(sf: SessionFactory) -> tuple[str, list[str]]:
    """A finished extract job written directly: a valid result, one its schema refused (the
    worker fails it ``output_invalid``, its text kept), one cut at its token budget."""
    now = utcnow()
    schema = {
        "type": "object",
        "properties": {"total": {"type": "number"}},
        "required": ["total"],
        "additionalProperties": False,
    }
    results: list[dict[str, Any]] = [
        {"result_json": {"total": 12.5}, "finish_reason": "stop"},
        {
            "status": "failed",
            "result_text": '{"total": "twelve"}',
            "error_code": "output_invalid",
            "error_message": "total: 'twelve' is not of type 'number'",
            "finish_reason": "stop",
        },
        {"result_json": {"total": 1}, "finish_reason": "length"},
    ]
    with sf.begin() as session:
        job = Job(
            kind="extract",
            status="completed",
            params={"schema": schema},
            model="m",
            prompt="Read the total.",
        )
        session.add(job)
        session.flush()
        ids = []
        for seq, result in enumerate(results):
            item = Item(
                job_id=job.id,
                seq=seq,
                source=f"invoice-{seq}.png",
                input_uri=f"file:///in/{seq}.png",
                **{"status": "succeeded", **result},
                prompt_tokens=321,
                completion_tokens=17,
                attempts=2,
                model="m",
                model_revision="rev-9f3",
                created_at=now,
                started_at=now,
                finished_at=now,
            )
            session.add(item)
            session.flush()
            ids.append(item.id)
        return job.id, ids


def test_the_item_page_tells_how_it_ran_and_an_edit_must_fit_the_schema(
    session_factory: SessionFactory, client: TestClient
) -> None:
    job_id, (valid, invalid, cut) = _extract_job(session_factory)
    grid = client.get(f"/jobs/{job_id}").text
    marks = {
        item: grid[grid.index(f'id="item-{item}"') :].split("</li>")[0]
        for item in (valid, invalid, cut)
    }
    assert "schema-invalid" in marks[invalid] and "schema-invalid" not in marks[valid]
    assert "truncated" in marks[cut] and "truncated" not in marks[valid]
    assert "&#34;total&#34;: 12.5" in marks[valid]  # pretty JSON, escaped

    page = client.get(f"/items/{valid}?edit=1").text
    for fact in ("Read the total.", "m @ rev-9f3", "321 in, 17 out", "<dd>2</dd>", "invoice-0.png"):
        assert fact in page, fact
    refused = post(client, f"/items/{valid}/edit", edited='{"total": "x"}')
    assert refused.status_code == 422
    problem = re.search(r'<p class="refused" id="error">error: ([^<]*)</p>', refused.text)
    assert problem and problem.group(1).endswith("[review_edit_invalid]"), problem
    assert "&#34;total&#34;: &#34;x&#34;" in refused.text  # kept
    assert item_detail(session_factory, valid).edited_json is None  # type: ignore[union-attr]
    saved = post(client, f"/items/{valid}/edit", edited='{"total": 13}')
    assert saved.status_code == 303
    detail = item_detail(session_factory, valid)
    assert detail is not None
    assert (detail.edited_json, detail.result_json) == ({"total": 13}, {"total": 12.5})
    assert detail.decision == "approved" and detail.reviewer == "ada"


def test_answers_show_as_question_and_answer(
    session_factory: SessionFactory, client: TestClient
) -> None:
    answers = [
        {"question": "What brand <b>is</b> it?", "answer": "Acme"},
        {"question": "Is there text?", "answer": None, "error_code": "output_truncated"},
    ]
    with session_factory.begin() as session:
        job = Job(kind="ask", status="completed", params={}, model="m")
        session.add(job)
        session.flush()
        session.add(
            Item(
                job_id=job.id,
                seq=0,
                source="p.png",
                input_uri="file:///in/p.png",
                status="succeeded",
                result_json=answers,
            )
        )
        job_id = job.id
    grid = client.get(f"/jobs/{job_id}").text
    assert "<dt>What brand &lt;b&gt;is&lt;/b&gt; it?</dt>" in grid
    assert "<dd>Acme</dd>" in grid
    assert '<dd class="failure">output_truncated </dd>' in grid


def test_numbers_in_a_url_beyond_what_a_column_holds_are_refused_not_an_error(
    client: TestClient, review_job: ReviewJob
) -> None:
    """A keyset or an input number past the database's integers (SQLite's OverflowError,
    PostgreSQL's integer out of range) or a digit that is not 0-9 ("²": str.isdigit says
    yes, int says no) is a 400 naming the parameter, not a server error."""
    job, item = review_job.job_id, review_job.item_ids[0]
    big = "9" * 25
    for url in (
        f"/jobs/{job}?after={big}",
        f"/jobs/{job}?before={big}",
        f"/jobs/{job}?after=-{big}",
        f"/items/{item}/image?input={big}",
        f"/items/{item}/image?page=%C2%B2",
        f"/items/{item}/thumb?input=%C2%B2",
    ):
        response = client.get(url)
        assert response.status_code == 400, (url, response.status_code)
    # the largest a column holds still pages: past the last item, an empty page
    assert client.get(f"/jobs/{job}?after={2**31 - 1}").status_code == 200


@SQLITE_ONLY
def test_a_back_link_is_never_to_another_site(client: TestClient, review_job: ReviewJob) -> None:
    """``back`` (where the item page and a decision return to) is kept only as a path of this
    site: a scheme, a host, "//", a backslash or a tab that a browser drops all fall back to the
    job's or the item's own page (docs/review.md#security)."""
    job, item = review_job.job_id, review_job.item_ids[0]
    hostile = (
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
        "evil.example",
    )
    for back in hostile:
        page = client.get(f"/items/{item}", params={"back": back}).text
        link = re.search(r'<a href="([^"]*)" id="back">', page)
        assert link and link.group(1) == f"/jobs/{job}", (back, link)
        decided = post(client, f"/items/{item}/decide", decision="approved", back=back)
        assert decided.status_code == 303, (back, decided.status_code, decided.text[:300])
        assert decided.headers["location"] == f"/items/{item}", back
    kept = f"/jobs/{job}?status=failed&after=3"
    page = client.get(f"/items/{item}", params={"back": kept}).text
    assert f'href="{kept.replace("&", "&amp;")}" id="back"' in page
    decided = post(client, f"/items/{item}/decide", decision="rejected", back=kept)
    assert decided.headers["location"] == kept


def test_deciding_an_item_as_it_already_is_is_not_an_unknown_item(
    client: TestClient, review_job: ReviewJob
) -> None:
    """``y`` twice on one row, or Approve on an approved item: the decision stands (nothing
    changed), not "No item" (404), which the keys' badge showed as "not saved"."""
    item = review_job.item_ids[0]
    csrf = client.cookies.get("llava_batch_csrf") or ""
    for _ in range(2):
        keyed = client.post(
            f"/items/{item}/decide",
            data={"decision": "approved"},
            headers={"origin": BASE, "x-csrf-token": csrf},
        )
        assert keyed.status_code == 200, keyed.text[:200]
        assert keyed.json()["decision"] == "approved"
    button = post(client, f"/items/{item}/decide", decision="approved")
    assert (button.status_code, button.headers.get("location")) == (303, f"/items/{item}")
    unknown = post(client, "/items/no-such-item/decide", decision="approved")
    assert unknown.status_code == 404


def _counts_shown(page: str) -> dict[str, Any]:
    """The job page's counts as a reader sees them: the job line, the banner, the chips and
    the bulk buttons."""
    chips = re.findall(r'data-(?:status|code)="([^"]+)">[^<]* ([0-9,+]+)</a>', page)
    return {
        "done": re.search(r"· ([0-9,+]+ / [0-9,+]+) done", page).group(1),  # type: ignore[union-attr]
        "banner": re.search(r'id="banner">([^<]*)<', page).group(1),  # type: ignore[union-attr]
        "chips": dict(chips),
        "approve": re.search(r'id="approve-shown">([^<]*)<', page).group(1),  # type: ignore[union-attr]
    }


def test_the_job_pages_counts_are_exact_for_a_small_job(
    client: TestClient, review_job: ReviewJob
) -> None:
    job_id = review_job.job_id
    assert _counts_shown(client.get(f"/jobs/{job_id}").text) == {
        "done": "24 / 24",
        "banner": "24 of 24 shown",
        "chips": {
            "succeeded": "12",
            "failed": "12",
            "image_decode_error": "6",
            "output_truncated": "6",
        },
        "approve": "Approve the 24 shown",
    }
    failed = _counts_shown(client.get(f"/jobs/{job_id}?status=failed&after=5").text)
    assert (failed["banner"], failed["approve"]) == ("12 of 24 shown", "Approve the 12 shown")


def test_the_job_pages_counts_stop_at_a_bound_and_say_so(
    client: TestClient, review_job: ReviewJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A count reads no more than its bound (10,000 rows; 5 here) of matching rows: beyond
    it, the page says "5+"."""
    from jobs.review import listing

    monkeypatch.setattr(listing, "COUNT_BOUND", 5)
    job_id = review_job.job_id
    assert _counts_shown(client.get(f"/jobs/{job_id}").text) == {
        "done": "10+ / 10+",
        "banner": "5+ of 5+ shown",
        "chips": {
            "succeeded": "5+",
            "failed": "5+",
            "image_decode_error": "5+",
            "output_truncated": "5+",
        },
        "approve": "Approve the 5+ shown",
    }
    # A first page holding every item of its view has counted them all: exact.
    few = _counts_shown(client.get(f"/jobs/{job_id}?code=output_truncated").text)
    assert few["banner"] == "6 of 5+ shown"
    unreviewed = f"/jobs/{job_id}?review=unreviewed&after=3"
    assert _counts_shown(client.get(unreviewed).text)["banner"] == "5+ of 5+ shown"
    post(client, f"/jobs/{job_id}/decide", status="failed", decision="rejected")
    monkeypatch.setattr(listing, "COUNT_BOUND", 24)  # the job's size: exact again
    assert _counts_shown(client.get(unreviewed).text)["banner"] == "12 of 24 shown"
