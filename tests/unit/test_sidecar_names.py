"""Sidecar names (``jobs.sidecars``) worked out from sources as the job recorded them: the roots
of local paths and of ``s3://`` keys, names with no file (custom_id, else item id), segments made
safe, and collisions settled by seq, whatever the names that collide."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from jobs.sidecars import MAX_SEGMENT_BYTES, SidecarNames, common_roots, sidecar_path


def _item(source: str, custom_id: str | None = None, item_id: str = "5f0c-item") -> Any:
    return SimpleNamespace(source=source, custom_id=custom_id, id=item_id)


def _paths(sources: list[str]) -> list[str]:
    roots = common_roots(sources)
    return ["/".join(sidecar_path(_item(s), roots)) for s in sources]


def test_local_paths_mirror_their_folders_under_the_deepest_common_one() -> None:
    assert _paths(["photos/a/x.jpg", "photos/b/y/z.png"]) == ["a/x.txt", "b/y/z.txt"]
    assert _paths(["./photos/a/x.jpg", "photos/a/y.jpeg"]) == ["x.txt", "y.txt"]
    assert _paths(["/data/p/a/x.jpg", "/data/p/x.JPG"]) == ["a/x.txt", "x.txt"]
    # Nothing in common: the whole path, with what cannot be a folder under DIR dropped.
    assert _paths(["/srv/x.jpg", "../up/y.png", "a//./b/../c.png"]) == [
        "srv/x.txt",
        "up/y.txt",
        "a/c.txt",
    ]
    assert _paths(["../../etc/passwd"]) == ["passwd.txt"]
    assert _paths(["//etc/x.jpg", "rel/y.jpg"]) == ["etc/x.txt", "rel/y.txt"]
    assert _paths(["/a\\b/c\x01.jpg", "/"]) == ["a_b/c_.txt", "5f0c-item.txt"]


def test_s3_keys_mirror_their_prefix_and_local_files_keep_their_own_root() -> None:
    sources = ["s3://bkt/cat/2026/a/x.jpg", "s3://bkt/cat/2026/b/y.jpg", "photos/z.png"]
    assert _paths(sources) == ["a/x.txt", "b/y.txt", "z.txt"]
    assert _paths(["s3://one/k/x.jpg", "s3://two/k/x.jpg"]) == ["one/k/x.txt", "two/k/x.txt"]


def test_items_without_a_file_name_are_named_by_custom_id_or_item_id() -> None:
    roots = common_roots(["data:image/png;base64,... (10 bytes)", ""])
    assert sidecar_path(_item("", "req/1.2"), roots) == ("req_1.2.txt",)
    assert sidecar_path(_item("data:image/png;base64,...", None, "abc"), roots) == ("abc.txt",)
    assert sidecar_path(_item("", "..", "abc"), roots) == ("abc.txt",)
    assert sidecar_path(_item("https://example.com/x.jpg", "c\x00\n\\d"), roots) == ("c___d.txt",)


def test_segments_are_cut_to_fit_a_file_system() -> None:
    long = "é" * 300 + ".jpg"
    (name,) = sidecar_path(_item(long), common_roots([long]))
    assert name.endswith(".txt") and len(name[:-4].encode()) <= MAX_SEGMENT_BYTES


def test_collisions_are_settled_by_seq_first_come_first_named() -> None:
    names = SidecarNames()
    taken = [
        names.take(("a", "x.txt"), 0),
        names.take(("a", "X.txt"), 1),  # the same but for case
        names.take(("a", "x~1.txt"), 2),  # an input whose own name is the one given to seq 1
        names.take(("a", "x.txt"), 6),  # a third x: its own seq
        names.take(("b", "x.txt"), 3),  # another folder: no collision
        names.take(("a", "e\u0301.txt"), 4),
        names.take(("a", "\u00e9.txt"), 5),  # the same after Unicode normalisation
    ]
    assert taken == [
        (("a", "x.txt"), 0),
        (("a", "X~1.txt"), 1),
        (("a", "x~1~2.txt"), 1),
        (("a", "x~6.txt"), 1),
        (("b", "x.txt"), 0),
        (("a", "e\u0301.txt"), 0),
        (("a", "\u00e9~5.txt"), 1),
    ]
