"""Where a job's results are written when it ends (``--deliver-to``): the target's forms, its
placeholders, and the folder each job gets.

A target is a folder: ``s3://bucket/prefix/`` or a local directory (a path, or ``file://``; made
absolute where it is given, since the process that writes it, a sweeper, runs elsewhere). It
may name ``{job}`` (the job id), ``{date}`` (the day the job was made, UTC, ``2026-12-07``) and,
a schedule's, ``{schedule}`` (its name). A target that does not name ``{job}`` gets the job's
own folder under it, ``<target><job id>/``: two jobs never write the same files, and a job's
files have names fixed before it ends (what makes a repeated write harmless).

Torch-, boto3- and SQLAlchemy-free: the CLI checks a target before it opens anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote

from jobs.errors import RequestError
from storage import InvalidUriError, is_s3_uri, parse_s3_uri, uri_scheme

PLACEHOLDERS = ("job", "date", "schedule")
_BRACED = re.compile(r"\{([^{}]*)\}")
# What a schedule's name may not put into a path: separators, braces, control characters.
_UNSAFE_IN_SEGMENT = re.compile(r"[\x00-\x1f\x7f/\\{}]")


def parse_target(text: str, *, option: str = "--deliver-to") -> str:
    """The target as it is stored: ``s3://bucket/prefix/`` or an absolute directory path, each
    ending with ``/``, its placeholders kept. RequestError ``invalid_output`` for anything
    else (another scheme, a malformed bucket, ``..``, a placeholder not in ``PLACEHOLDERS``)."""
    if not text.strip() or "\x00" in text:
        raise _refused(text, option, "is not an s3:// prefix or a local directory")
    _check_placeholders(text, option)
    sample = fill(text, job="j", date="2000-01-01", schedule="s")
    if is_s3_uri(text):
        try:
            parse_s3_uri(sample)
        except InvalidUriError as exc:
            raise _refused(text, option, f"is not a usable S3 prefix ({exc})") from None
        return text if text.endswith("/") else text + "/"
    if uri_scheme(text) == "file":
        from storage.blobs import parse_file_uri

        try:
            parse_file_uri(sample)
        except InvalidUriError:
            raise _refused(text, option, "is not an absolute file:// path") from None
        text = unquote(text[len("file://") :].removeprefix("localhost"))
    elif uri_scheme(text) is not None:
        raise _refused(text, option, "names a scheme results are never written to (only s3://)")
    if ".." in Path(sample).parts:
        raise _refused(text, option, "climbs out of a folder ('..')")
    absolute = os.path.abspath(os.path.expanduser(text))
    if Path(absolute).exists() and not Path(absolute).is_dir():
        raise _refused(text, option, "is a file, not a directory")
    return absolute.rstrip("/") + "/"


OUTPUT_SETTING = "LLAVA_BATCH_OUTPUT_PREFIXES"


def allowed(folder: str, prefixes: Sequence[str]) -> bool:
    """Whether ``folder`` (a target, its placeholders filled) lies under one of ``prefixes``
    (``LLAVA_BATCH_OUTPUT_PREFIXES``, as ``jobs.input_policy.parse_entries`` reads it; empty:
    anywhere). A local folder is compared by its real path (a link out of a listed folder
    does not count as inside it); listed folders are the only local ones allowed once the
    setting is set, since the sweeper, not the submitter, writes them."""
    if not prefixes:
        return True
    if is_s3_uri(folder):
        return any(p.startswith("s3://") and folder.startswith(p) for p in prefixes)
    real = Path(os.path.realpath(folder))
    return any(
        not p.startswith("s3://") and real.is_relative_to(os.path.realpath(p)) for p in prefixes
    )


def check_allowed(target: str, prefixes: Sequence[str], *, option: str = "--deliver-to") -> None:
    """Refuses (``output_not_allowed``) a target outside ``LLAVA_BATCH_OUTPUT_PREFIXES``,
    judged with its placeholders filled (no filling holds a ``/``)."""
    if not allowed(fill(target, job="j", date="2000-01-01", schedule="s"), prefixes):
        raise RequestError(
            f"{option} {target[:200]!r} is outside {OUTPUT_SETTING} ({', '.join(prefixes)}).",
            code="output_not_allowed",
        )


def names_schedule(target: str) -> bool:
    return "{schedule}" in target


def fill_schedule(target: str, schedule: str) -> str:
    """``target`` with ``{schedule}`` replaced by the schedule's name, made one safe path
    segment (separators, braces and control characters become ``_``; ``..`` and ``.`` too)."""
    segment = _UNSAFE_IN_SEGMENT.sub("_", schedule)
    if segment in ("", ".", ".."):
        segment = segment.replace(".", "_") or "_"
    return target.replace("{schedule}", segment)


def job_folder(target: str, *, job_id: str, made_at: datetime) -> str:
    """The folder a job's files go to: ``target`` with ``{job}`` and ``{date}`` filled in,
    under ``<job id>/`` when it does not name ``{job}``. ``{schedule}`` was filled before
    (``fill_schedule``: only a schedule's target names it)."""
    folder = target if "{job}" in target else target + "{job}/"
    return fill(folder, job=job_id, date=f"{made_at:%Y-%m-%d}", schedule="{schedule}")


def fill(target: str, *, job: str, date: str, schedule: str) -> str:
    values = {"job": job, "date": date, "schedule": schedule}
    return _BRACED.sub(lambda m: values.get(m.group(1), m.group(0)), target)


def _check_placeholders(text: str, option: str) -> None:
    for name in _BRACED.findall(text):
        if name not in PLACEHOLDERS:
            raise _refused(
                text, option, f"names {{{name}}}: a target may name {{job}}, {{date}}, {{schedule}}"
            )
    if "{" in _BRACED.sub("", text) or "}" in _BRACED.sub("", text):
        raise _refused(text, option, "has a brace that opens or closes no placeholder")


def _refused(text: str, option: str, why: str) -> RequestError:
    return RequestError(f"{option} {text[:200]!r} {why}.", code="invalid_output")
