"""``results --format txt -o DIR`` through the real CLI, on SQLite and PostgreSQL, of jobs run with
the fake engine: one sidecar per succeeded item mirroring nested input folders (and s3:// keys
under their prefix, in moto's server); names that collide (one name in two folders is not a
collision, ``x.png`` beside ``x.jpg``, names equal but for case, an input submitted twice) each
get their own file; hostile names (``..`` from the command line, a custom_id of ``../``) and a
folder under DIR that links out of it never write outside DIR; ``--overwrite`` off and on;
failed items write nothing; the refusals."""

from __future__ import annotations

import base64
import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from jobs.submit.openai_reader import BatchFormat
from jobs.submit.request import SubmitRequest
from model.fake import FakeEngine
from storage import open_blobs
from tests.helpers import image_bytes, make_resources, migrated_session_factory, write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error
from workers.local import run_job_locally


@pytest.fixture(params=["sqlite", "postgresql"])
def url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The database the job is run in and the CLI reads: each test runs on both."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("migrated_pg_url"))
    return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"


def _run(tmp_path: Path, url: str, kind: str, sources: list[str], **params: object) -> str:
    sf = migrated_session_factory(url)
    blobs = open_blobs(str(tmp_path / "blobs"))
    request = SubmitRequest.of(kind, sources, "tiny-llava", batch_size=8, **params)
    resources = make_resources(sf, blobs, FakeEngine(), gpu_batch_size=8)
    return run_job_locally(request, resources, max_prompt_chars=4000).job_id


def _env(tmp_path: Path, url: str) -> dict[str, str]:
    return {"LLAVA_BATCH_DATABASE_URL": url, "LLAVA_BATCH_STORAGE_URL": str(tmp_path / "blobs")}


def _captions(env: dict[str, str], run_cli: RunCli, job_id: str) -> dict[str, str]:
    """Each input's caption, from ``results`` (jsonl)."""
    rows = [json.loads(line) for line in run_cli("results", job_id, env=env).stdout.splitlines()]
    return {row["input"]: row["result"] for row in rows if row["status"] == "succeeded"}


def _tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _photos(work: Path) -> None:
    """photos/a/{img000,img001}.png, photos/a/deep/er/img000.png, photos/b/img000.png (the name
    of a/ again), photos/b/IMG000.png (the same but for case), photos/b/img000.jpg (its stem
    again), photos/b/broken.png (fails)."""
    photos = work / "photos"
    write_images(photos / "a", 2)
    write_images(photos / "a" / "deep" / "er", 1)
    write_images(photos / "b", 1)
    shutil.copy(photos / "a" / "img001.png", photos / "b" / "IMG000.png")
    shutil.copy(photos / "a" / "img000.png", photos / "b" / "img000.jpg")
    (photos / "b" / "broken.png").write_bytes(b"not an image at all")


def test_sidecars_mirror_nested_folders_and_collisions_get_their_own_names(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    work = tmp_path / "work"
    _photos(work)
    monkeypatch.chdir(work)
    # The folder, then one of its images again: submitted twice.
    job_id = _run(tmp_path, url, "caption", ["photos", "photos/a/img000.png"])
    env = _env(tmp_path, url)
    captions = _captions(env, run_cli, job_id)
    assert len(captions) == 6  # 7 inputs, one twice, one broken
    out = tmp_path / "out"

    done = run_cli("results", job_id, "--format", "txt", "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    # seq (a folder's files before its subfolders): a/img000 0, a/img001 1, a/deep/er/img000 2,
    # b/IMG000 3, b/broken 4, b/img000.jpg 5, b/img000.png 6, a/img000 again 7. b/IMG000 takes
    # b/img000.txt first (case aside), so b/img000.jpg and b/img000.png get their seq.
    assert _tree(out) == {
        "a/deep/er/img000.txt": captions["photos/a/deep/er/img000.png"],
        "a/img000.txt": captions["photos/a/img000.png"],
        "a/img001.txt": captions["photos/a/img001.png"],
        "b/IMG000.txt": captions["photos/b/IMG000.png"],
        "b/img000~5.txt": captions["photos/b/img000.jpg"],
        "b/img000~6.txt": captions["photos/b/img000.png"],
        "a/img000~7.txt": captions["photos/a/img000.png"],
    }
    summary = done.stderr.strip().splitlines()
    assert len(summary) == 1, done.stderr
    assert summary[0].startswith(f"wrote 7 sidecar file(s) under {out}")
    assert "3 of them named <name>~<seq>.txt" in summary[0]
    assert "1 failed, cancelled or expired item(s) wrote nothing" in summary[0]

    # Without --overwrite a file already there is left alone and counted; the rest is written.
    (out / "a" / "img000.txt").write_text("mine", encoding="utf-8")
    (out / "b" / "IMG000.txt").unlink()
    again = run_cli("results", job_id, "--format", "txt", "-o", str(out), env=env)
    assert again.returncode == 0, again.stderr
    assert (out / "a" / "img000.txt").read_text(encoding="utf-8") == "mine"
    assert (out / "b" / "IMG000.txt").read_text(encoding="utf-8") == captions["photos/b/IMG000.png"]
    assert "wrote 1 sidecar file(s)" in again.stderr
    assert "6 already there, left as they were (--overwrite replaces)" in again.stderr

    # With it, replaced; no temporary file is left behind.
    replaced = run_cli("results", job_id, "--format", "txt", "-o", str(out), "--overwrite", env=env)
    assert replaced.returncode == 0, replaced.stderr
    assert (out / "a" / "img000.txt").read_text(encoding="utf-8") == captions["photos/a/img000.png"]
    assert "wrote 7 sidecar file(s)" in replaced.stderr
    assert "already there" not in replaced.stderr
    assert not [p for p in out.rglob(".*") if p.is_file()]
    # Readable as any file the user makes there (0o666 less the umask), not owner-only.
    (tmp_path / "ordinary.txt").write_text("x", encoding="utf-8")
    ordinary = stat.S_IMODE((tmp_path / "ordinary.txt").stat().st_mode)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*.txt")} == {ordinary}

    # A sidecar that cannot be written stops the export with one line, saying how far it got.
    (out / "a" / "img001.txt").unlink()
    (out / "a" / "img001.txt").mkdir()
    stopped = run_cli("results", job_id, "--format", "txt", "-o", str(out), "--overwrite", env=env)
    assert_one_line_error(stopped, 2, "a/img001.txt", "1 sidecar file(s)", "[invalid_output]")


def test_hostile_names_never_write_outside_the_folder(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    env = _env(tmp_path, url)
    work, outside = tmp_path / "work", tmp_path / "outside"
    write_images(work / "here", 1)
    write_images(outside, 1, prefix="up")
    monkeypatch.chdir(work)
    # "../outside/up000.png": the common root of it and "here/…" is the working folder's parent
    # only by "..": lexically there is none, and ".." is dropped.
    caption_job = _run(tmp_path, url, "caption", ["../outside/up000.png", "here"])
    out = tmp_path / "deep" / "out"
    done = run_cli("results", caption_job, "--format", "txt", "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(_tree(out)) == ["here/img000.txt", "outside/up000.txt"]

    # OpenAI-Batch requests with data: images have no file name: custom_id names them, its
    # "/" and control characters made "_"; an empty one would be the item id.
    uri = "data:image/png;base64," + base64.b64encode(image_bytes((32, 32), seed=1)).decode()
    lines = []
    for custom_id in ("../../escaped", "/etc/cron.d/x", "line\nbreak", "ok"):
        body = {
            "model": "tiny-llava",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is it?"},
                        {"type": "image_url", "image_url": {"url": uri}},
                    ],
                }
            ],
            "max_tokens": 8,
        }
        line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
        lines.append(json.dumps({**line, "body": body}))
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    chat_job = _run(tmp_path, url, "chat", [str(batch)], input_format=BatchFormat.auto)
    chat_out = tmp_path / "chat" / "out"
    done = run_cli("results", chat_job, "--format", "txt", "-o", str(chat_out), env=env)
    assert done.returncode == 0, done.stderr
    written = _tree(chat_out)
    assert sorted(written) == [
        ".._.._escaped.txt",
        "_etc_cron.d_x.txt",
        "line_break.txt",
        "ok.txt",
    ]
    assert all(written.values())
    # Nothing landed beside the folder or above it.
    assert sorted(p.name for p in (tmp_path / "chat").iterdir()) == ["out"]
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "etc").exists()

    # A folder under DIR that is a symbolic link out of it is not written through.
    linked = tmp_path / "linked"
    linked.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (linked / "here").symlink_to(target, target_is_directory=True)
    done = run_cli("results", caption_job, "--format", "txt", "-o", str(linked), env=env)
    assert done.returncode == 0, done.stderr
    assert list(target.iterdir()) == []
    assert sorted(_tree(linked)) == ["outside/up000.txt"]
    assert "1 not written: their folder under" in done.stderr


def test_txt_refusals(run_cli: RunCli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"  # refusals read the job only
    env = _env(tmp_path, url)
    write_images(tmp_path / "imgs", 1)
    caption_job = _run(tmp_path, url, "caption", [str(tmp_path / "imgs")])
    ask_job = _run(tmp_path, url, "ask", [str(tmp_path / "imgs")], questions=["Brand?", "Color?"])

    to_stdout = run_cli("results", caption_job, "--format", "txt", env=env)
    assert_one_line_error(to_stdout, 2, "-o DIR", "[invalid_option]")
    narrowed = run_cli(
        "results", caption_job, "--format", "txt", "-o", str(tmp_path / "o"), "--status",
        "failed", env=env,
    )  # fmt: skip
    assert_one_line_error(narrowed, 2, "--status", "[invalid_option]")
    several = run_cli("results", ask_job, "--format", "txt", "-o", str(tmp_path / "o"), env=env)
    assert_one_line_error(several, 2, "ask job", "[invalid_option]")
    stray = run_cli("results", caption_job, "--overwrite", env=env)
    assert_one_line_error(stray, 2, "--overwrite", "[invalid_option]")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    into_a_file = run_cli("results", caption_job, "--format", "txt", "-o", str(a_file), env=env)
    assert_one_line_error(into_a_file, 2, str(a_file), "[invalid_output]")
    assert not (tmp_path / "o").exists()


def test_s3_objects_mirror_their_keys_under_the_prefix(
    run_cli: RunCli, tmp_path: Path, url: str, s3_bucket: str, s3_client: Any
) -> None:
    env = _env(tmp_path, url)
    for n, key in enumerate(["cat/2026/a/x.png", "cat/2026/b/y/z.png", "cat/2026/b/y/Z.PNG"]):
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=image_bytes((16, 16), seed=n))
    job_id = _run(tmp_path, url, "caption", [f"s3://{s3_bucket}/cat/2026/"])
    captions = _captions(env, run_cli, job_id)
    out = tmp_path / "out"
    done = run_cli("results", job_id, "--format", "txt", "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    prefix = f"s3://{s3_bucket}/cat/2026/"
    # Keys list in byte order: b/y/Z.PNG comes before b/y/z.png and takes b/y/Z.txt.
    assert _tree(out) == {
        "a/x.txt": captions[f"{prefix}a/x.png"],
        "b/y/Z.txt": captions[f"{prefix}b/y/Z.PNG"],
        "b/y/z~2.txt": captions[f"{prefix}b/y/z.png"],
    }
