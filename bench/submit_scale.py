"""Submit at scale: how long a big S3 prefix takes to submit, and what a huge manifest costs.

    python bench/submit_scale.py [--objects 100000] [--manifest-lines 1000000]
                                 [--rss-limit-mb 3000] [--skip-manifest] [--skip-cli]
                                 [--s3 indexed|moto]

Against the local PostgreSQL (LLAVA_BATCH_BENCH_POSTGRES, default postgresql://postgres@
127.0.0.1:5432/postgres: a fresh database per run, dropped after) and Redis
(LLAVA_BATCH_BENCH_REDIS, default redis://127.0.0.1:6379/0: a unique queue, deleted after), with
S3 served by moto in a separate process (so its CPU is not ours), the objects put straight into
its backend (tiny bodies: S3 inputs are referenced by submit, never read). moto scans and sorts
the whole bucket for every page it lists, so its 100 pages of 100k keys cost it alone 30 to 45 s
here, where S3 answers a page in tens of milliseconds; by default (``--s3 indexed``) the bench's
bucket is listed from a sorted index (``index_listing``), so a page costs the stand-in what it
returns. ``--s3 moto`` measures against moto as it is.

(a) ``submit caption s3://bucket/prefix/`` of ``--objects`` objects, in this process through
    ``submit_job`` with a timeline: listing done (the listing iterator exhausted), rows committed
    (the last COMMIT), messages (the last publish); and end to end through the real CLI.
(b) ``llava-batch submit caption manifest.jsonl`` of ``--manifest-lines`` lines naming local
    files (cycling over a thousand small files next to it), in a subprocess: wall time and peak
    RSS (``wait4``'s ru_maxrss), killed once it passes ``--rss-limit-mb``.
(c) the time from submit start to the first message published, for (a) (in process) and (b)
    (the first message to appear on the Redis queue, polled).

Targets (issue 11): (a) ≤ 30 s; (b) < 500 MB; (c) the first message does not wait for the last
row.

Measured 2026-12-05 on the shared 2-core dev machine (noisy: other benchmarks ran alongside),
before → after the streaming submit (two passes, chunked multi-row INSERTs in one transaction,
pipelined publishing):

    (a) 100k objects, in process   listing 96.4 → 78.2 s (moto alone ~56 s, our CPU 17 s)
                                   rows 57.4 → 7.2 s; messages 10.7 → 8.8 s
                                   total 164.7 → 94.1 s
        CLI end to end             191.9 → 98.0 s; peak RSS 730 → 168 MB
    (b) 1M-line manifest, CLI      killed at > 1000 MB after 176 s → 325 MB, 1137 s, 1M rows
    (c) first message              154 → 86 s (in process): still after the one commit

Measured 2026-12-05 (later), same machine (as noisy), in process only (--skip-manifest --skip-cli),
before → after a big job's rows are committed in chunks, each published at once:

    (a) 100k objects, in process   listing 51.4 → 52.7 s (moto alone ~37 s, our CPU ~11 s)
                                   rows + messages 12.4 → 17.4 s (now interleaved; without
                                   moto, 100k rows + messages: one transaction 8.3 to 13.3 s,
                                   chunks 11.8 to 12.4 s)
                                   total 63.8 → 70.1 s
    (c) first message              57.6 → 52.9 s: 0.17 s after the listing (the checking pass)
                                   ends, no longer after the last row

Then, with boto3 leaving LastModified unparsed (nothing reads it):

    (a) 100k objects, in process   listing 45.7 s, of which this process's CPU 4.8 s (was ~11)
                                   and moto alone 43.2 s; rows + messages 14.4 s; total 60.1 s
    (c) first message              45.9 s: 0.2 s after the listing ends

Measured 2026-12-05 (a new session, a quieter machine), with the bench's publisher batching as
the CLI's does (it had hidden ``batched`` and so published one round trip per message) and a
summary for Celery's kwargsrepr instead of its saferepr of every id:

    (a) 100k objects, in process   --s3 moto: listing 35.3 s (moto alone 29.4 s), rows +
                                   messages 6.3 s (were 10.9 s), total 41.6 s
                                   --s3 indexed (the default): listing 16.7 s (the stand-in
                                   alone 11.6 s, this process's CPU 4.1 s), rows + messages
                                   6.1 s, total 22.9 s
        CLI end to end             23.4 s (indexed); peak RSS 165 MB
    (c) first message              16.9 s: 0.2 s after the listing ends
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUCKET = "bench-scale"
PREFIX = "catalogue"
MODEL = "tiny-llava"


# --- S3: moto in its own process, filled through its backend --------------------------------


def serve_s3(objects: int, port_file: Path, *, indexed: bool) -> None:
    """Runs in a child process: a moto S3 server with ``objects`` tiny objects under PREFIX;
    with ``indexed``, its listing of that bucket pages through a sorted index
    (``index_listing``)."""
    import logging

    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    backend.create_bucket(BUCKET, "us-east-1")
    for i in range(objects):
        backend.put_object(BUCKET, f"{PREFIX}/{i:07d}.jpg", b"\xff\xd8\xff" + i.to_bytes(4, "big"))
    if indexed:
        index_listing(backend, BUCKET)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    port_file.write_text(f"http://{host}:{port}")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop()


def index_listing(backend: Any, bucket_name: str) -> None:
    """Makes moto page through ``bucket_name`` the way S3 does: at a cost per page, not per
    bucket.

    moto answers every ListObjectsV2 page by scanning and sorting the whole bucket: at 100,000
    keys, about 0.43 s a page here, 43 s for the prefix, over the target on its own. S3 answers
    a page of 1,000 keys in tens of milliseconds whatever the bucket's size. The bucket is
    filled before the server starts and never written during the bench, so one sorted list of
    its key names serves every page; moto still parses the request, renders the XML and keeps
    its continuation tokens. Listings with a delimiter, and other buckets, go to moto as is.
    """
    import bisect

    bucket = backend.get_bucket(bucket_name)
    names = sorted(bucket.keys.keys())
    original = backend.list_objects_v2

    def list_objects_v2(
        *,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        continuation_token: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> Any:
        if bucket.name != bucket_name or delimiter:
            return original(
                bucket=bucket,
                prefix=prefix,
                delimiter=delimiter,
                continuation_token=continuation_token,
                start_after=start_after,
                max_keys=max_keys,
            )
        after = (
            backend._pagination_tokens.get(continuation_token)
            if continuation_token
            else start_after
        )
        start = bisect.bisect_left(names, prefix or "")
        if after:
            start = max(start, bisect.bisect_right(names, after))
        page = []
        for name in names[start : start + max_keys + 1]:  # one more: is there a next page?
            if prefix and not name.startswith(prefix):
                break
            page.append(bucket.keys[name])
        return backend._truncate_result(page, max_keys)

    backend.list_objects_v2 = list_objects_v2


def start_s3(
    objects: int, workdir: Path, *, indexed: bool = True
) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / "s3-endpoint"
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve-s3",
            str(objects),
            str(port_file),
            *(["--s3", "indexed"] if indexed else ["--s3", "moto"]),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not port_file.exists() or not port_file.read_text():
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the moto server did not start")
        time.sleep(0.2)
    return child, port_file.read_text()


# --- PostgreSQL and Redis ------------------------------------------------------------------


def create_database(server: str) -> tuple[str, str]:
    import psycopg

    name = f"llava_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{server.rsplit('/', 1)[0]}/{name}".replace("postgresql://", "postgresql+psycopg://")
    from jobs.db import make_engine
    from jobs.migrate import upgrade_database

    engine = make_engine(url)
    upgrade_database(engine)
    engine.dispose()
    return name, url


def drop_database(server: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count_rows(url: str) -> int:
    from sqlalchemy import func, select

    from jobs.db import Item, make_engine, make_session_factory

    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(Item)) or 0)
    finally:
        engine.dispose()


# --- (a) in process, with a timeline -------------------------------------------------------


@dataclass
class Timeline:
    start: float = 0.0
    listed: float | None = None
    cpu_start: float = 0.0
    cpu_listed: float | None = None  # this process's CPU seconds when the listing was done
    first_commit: float | None = None
    last_commit: float | None = None
    first_publish: float | None = None
    last_publish: float | None = None
    messages: int = 0
    ids: int = 0
    commits: list[float] = field(default_factory=list)
    commit_count: int = 0  # a big job commits its rows chunk by chunk

    def since(self, at: float | None) -> float | None:
        return None if at is None else at - self.start


class TimedPublisher:
    def __init__(self, inner: Any, timeline: Timeline) -> None:
        self._inner, self._timeline = inner, timeline

    def publish(
        self,
        job_id: str,
        item_ids: Sequence[str],
        *,
        model: str,
        dispatched_at: datetime | None = None,
    ) -> None:
        self._inner.publish(job_id, item_ids, model=model, dispatched_at=dispatched_at)
        now = time.perf_counter()
        if self._timeline.first_publish is None:
            self._timeline.first_publish = now
        self._timeline.last_publish = now
        self._timeline.messages += 1
        self._timeline.ids += len(item_ids)

    def oldest_waiting(self, model: str) -> datetime | None:
        return self._inner.oldest_waiting(model)  # type: ignore[no-any-return]

    def batched(self) -> AbstractContextManager[None]:
        # Without it, dispatch would publish one round trip per message, as the CLI does not.
        return self._inner.batched()  # type: ignore[no-any-return]


def submit_in_process(db_url: str, redis_url: str, queue: str, storage: Path) -> Timeline:
    from sqlalchemy import event

    from jobs.db import make_engine, make_session_factory
    from jobs.dispatch import CeleryPublisher
    from jobs.submit.job import submit_job
    from jobs.submit.request import SubmitRequest
    from storage import open_blobs

    timeline = Timeline()
    engine = make_engine(db_url)

    @event.listens_for(engine, "commit")
    def _committed(conn: Any) -> None:
        now = time.perf_counter()
        timeline.commits.append(now)

    blobs = open_blobs(str(storage))
    list_uri = blobs.list_uri

    def timed_list(uri: str) -> Iterator[Any]:
        yield from list_uri(uri)
        timeline.listed = time.perf_counter()
        timeline.cpu_listed = time.process_time()

    blobs.list_uri = timed_list  # type: ignore[method-assign,assignment]
    publisher = TimedPublisher(CeleryPublisher(redis_url, queue), timeline)
    request = SubmitRequest.of("caption", [f"s3://{BUCKET}/{PREFIX}/"], MODEL)
    timeline.start = time.perf_counter()
    timeline.cpu_start = time.process_time()
    result = submit_job(
        request,
        session_factory=make_session_factory(engine),
        blobs=blobs,
        publisher=publisher,
        max_prompt_chars=4000,
    )
    end = time.perf_counter()
    if timeline.commits:
        timeline.first_commit, timeline.last_commit = timeline.commits[0], timeline.commits[-1]
    timeline.commit_count = len(timeline.commits)
    timeline.commits = [end]  # the end of submit_job
    engine.dispose()
    assert result.item_count == timeline.ids, (result.item_count, timeline.ids)
    return timeline


# --- (b) the real CLI in a subprocess ------------------------------------------------------


@dataclass
class CliRun:
    wall_s: float
    peak_rss_mb: float
    returncode: int
    killed: bool
    first_message_s: float | None
    output: str


def run_cli(
    args: list[str], env: dict[str, str], *, rss_limit_mb: float, redis_url: str, queue_key: str
) -> CliRun:
    import redis

    client = redis.Redis.from_url(redis_url)
    start = time.perf_counter()
    child = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "llava-batch"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    killed = False
    first_message: float | None = None
    done = threading.Event()

    def watch() -> None:
        nonlocal killed, first_message
        status = Path(f"/proc/{child.pid}/status")
        while not done.is_set():
            if first_message is None and client.llen(queue_key) > 0:
                first_message = time.perf_counter() - start
            try:
                rss_kb = next(
                    int(line.split()[1])
                    for line in status.read_text().splitlines()
                    if line.startswith("VmRSS:")
                )
            except (OSError, StopIteration):
                rss_kb = 0
            if rss_kb > rss_limit_mb * 1024:
                killed = True
                child.kill()
                return
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert child.stdout is not None
    output = child.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    client.close()
    return CliRun(
        wall_s=wall,
        peak_rss_mb=usage.ru_maxrss / 1024,
        returncode=child.returncode,
        killed=killed,
        first_message_s=first_message,
        output=output[-2000:],
    )


def write_manifest(directory: Path, lines: int, files: int = 1000) -> Path:
    images = directory / "img"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (images / f"{i:04d}.jpg").write_bytes(b"\xff\xd8\xff" + i.to_bytes(4, "big") * 8)
    manifest = directory / "manifest.jsonl"
    with manifest.open("w") as f:
        for i in range(lines):
            f.write(json.dumps({"input": f"img/{i % files:04d}.jpg", "id": f"line-{i}"}) + "\n")
    return manifest


def show(rows: list[tuple[str, str]]) -> None:
    for label, value in rows:
        print(f"{label:<44}  {value}", flush=True)


def moto_page_seconds(endpoint: str) -> float:
    """What the S3 stand-in alone takes to answer one page of 1,000 keys (median of three, deep
    and shallow): the floor of any client here. moto's own listing is O(keys in the bucket) per
    page; the indexed one, O(keys in the page)."""
    import urllib.request

    times = []
    for after in ("", "&start-after=" + f"{PREFIX}/0050000.jpg", ""):
        t = time.perf_counter()
        url = f"{endpoint}/{BUCKET}?list-type=2&prefix={PREFIX}/&max-keys=1000{after}"
        with urllib.request.urlopen(url) as response:
            response.read()
        times.append(time.perf_counter() - t)
    return sorted(times)[1]


def fmt(value: float | None, unit: str = "s") -> str:
    return "—" if value is None else f"{value:8.2f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--manifest-lines", type=int, default=1_000_000)
    parser.add_argument("--rss-limit-mb", type=float, default=3000)
    parser.add_argument("--skip-manifest", action="store_true")
    parser.add_argument("--skip-cli", action="store_true", help="(a) in process only")
    parser.add_argument("--skip-prefix", action="store_true")
    parser.add_argument(
        "--s3",
        choices=["indexed", "moto"],
        default="indexed",
        help="moto with a listing that costs per page as S3's does (default), or moto as is "
        "(its listing scans the whole bucket for every page)",
    )
    parser.add_argument("--serve-s3", nargs=2, metavar=("OBJECTS", "PORT_FILE"))
    args = parser.parse_args()
    if args.serve_s3:
        serve_s3(int(args.serve_s3[0]), Path(args.serve_s3[1]), indexed=args.s3 == "indexed")
        return

    pg_server = os.environ.get(
        "LLAVA_BATCH_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    redis_url = os.environ.get("LLAVA_BATCH_BENCH_REDIS", "redis://127.0.0.1:6379/0")
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    queue_key = f"{queue}.{MODEL}"
    with tempfile.TemporaryDirectory(prefix="submit-scale-") as tmp:
        workdir = Path(tmp)
        t = time.perf_counter()
        s3, endpoint = start_s3(
            0 if args.skip_prefix else args.objects, workdir, indexed=args.s3 == "indexed"
        )
        listing = "indexed listing" if args.s3 == "indexed" else "its own listing"
        print(
            f"moto S3 ({listing}) with {args.objects} objects up in {time.perf_counter() - t:.1f} s"
        )
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "LLAVA_BATCH_BROKER_URL": redis_url,
            "LLAVA_BATCH_QUEUE": queue,
            "LLAVA_BATCH_STORAGE_URL": str(workdir / "blobs"),
        }
        os.environ.update({k: env[k] for k in env if k.startswith("AWS_")})
        import redis

        broker = redis.Redis.from_url(redis_url)
        try:
            if not args.skip_prefix:
                name, db_url = create_database(pg_server)
                try:
                    tl = submit_in_process(db_url, redis_url, queue, workdir / "blobs")
                    assert count_rows(db_url) == args.objects
                finally:
                    drop_database(pg_server, name)
                    broker.delete(queue_key)
                end = tl.commits[-1]
                listed = tl.since(tl.listed)
                committed = tl.since(tl.last_commit)
                published = tl.since(tl.last_publish)
                show(
                    [
                        (f"(a) {args.objects} objects, in process", ""),
                        ("    listing done at", fmt(listed)),
                        ("    rows committed at (last COMMIT)", fmt(committed)),
                        ("    last message at", fmt(published)),
                        ("    listing", fmt(listed)),
                        (
                            "      of which this process's CPU",
                            fmt(None if tl.cpu_listed is None else tl.cpu_listed - tl.cpu_start),
                        ),
                        (
                            f"      the stand-in alone ({args.s3}): s per page x pages",
                            fmt(moto_page_seconds(endpoint) * -(-args.objects // 1000)),
                        ),
                        (
                            "    rows (listing done → last commit)",
                            fmt(
                                None if committed is None or listed is None else committed - listed
                            ),
                        ),
                        (
                            "    messages (last commit → last message)",
                            fmt(
                                None
                                if published is None or committed is None
                                else max(0.0, published - committed)
                            ),
                        ),
                        ("    total (submit_job)", fmt(end - tl.start)),
                        ("    messages / commits", f"{tl.messages} / {tl.commit_count}"),
                        ("(c) first chunk committed at", fmt(tl.since(tl.first_commit))),
                        ("(c) first message at (in process)", fmt(tl.since(tl.first_publish))),
                    ]
                )
                if not args.skip_cli:
                    name, db_url = create_database(pg_server)
                    try:
                        run = run_cli(
                            ["submit", "caption", f"s3://{BUCKET}/{PREFIX}/", "--json"],
                            {**env, "LLAVA_BATCH_DATABASE_URL": db_url},
                            rss_limit_mb=args.rss_limit_mb,
                            redis_url=redis_url,
                            queue_key=queue_key,
                        )
                        stored = count_rows(db_url)
                    finally:
                        drop_database(pg_server, name)
                        broker.delete(queue_key)
                    if run.returncode != 0:
                        print(run.output)
                    show(
                        [
                            (f"(a) {args.objects} objects, CLI end to end", fmt(run.wall_s)),
                            ("    exit code / rows", f"{run.returncode} / {stored}"),
                            ("    peak RSS", fmt(run.peak_rss_mb, "MB")),
                            ("(c) first message on Redis (CLI)", fmt(run.first_message_s)),
                        ]
                    )
            if not args.skip_manifest:
                t = time.perf_counter()
                manifest = write_manifest(workdir / "manifest", args.manifest_lines)
                took = time.perf_counter() - t
                print(f"{args.manifest_lines}-line manifest written in {took:.1f} s")
                name, db_url = create_database(pg_server)
                try:
                    run = run_cli(
                        ["submit", "caption", str(manifest), "--json"],
                        {**env, "LLAVA_BATCH_DATABASE_URL": db_url},
                        rss_limit_mb=args.rss_limit_mb,
                        redis_url=redis_url,
                        queue_key=queue_key,
                    )
                    stored = count_rows(db_url)
                finally:
                    drop_database(pg_server, name)
                    broker.delete(queue_key)
                if run.returncode != 0 and not run.killed:
                    print(run.output)
                rss = fmt(run.peak_rss_mb, "MB")
                show(
                    [
                        (f"(b) {args.manifest_lines}-line manifest, CLI", fmt(run.wall_s)),
                        (
                            "    peak RSS",
                            f"> {args.rss_limit_mb:.0f} MB (killed)" if run.killed else rss,
                        ),
                        ("    exit code / rows", f"{run.returncode} / {stored}"),
                        ("(c) first message on Redis (CLI)", fmt(run.first_message_s)),
                    ]
                )
        finally:
            broker.close()
            s3.send_signal(signal.SIGTERM)
            s3.wait(30)


if __name__ == "__main__":
    main()
