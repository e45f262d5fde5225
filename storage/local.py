"""Blob store in a local directory (single-machine mode and tests).

The trust boundary is the key (or file:// URI) a user supplies: it must never reach outside
``root``, whether through ``..``, an absolute path or a symlink.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote_from_bytes

from storage.base import BlobStore, ObjectInfo
from storage.errors import AccessDeniedError, InvalidUriError, ObjectNotFoundError, StorageError
from storage.limits import check_size, read_limited
from storage.uri import validate_key

# Temp files are hidden and suffixed so listings can skip half-written objects.
_TMP_SUFFIX = ".tmp"


class LocalStore(BlobStore):
    """Keys map to files under ``root``; writes are atomic (temp file + os.replace)."""

    def __init__(self, root: Path) -> None:
        # Resolved once so every containment check compares real paths.
        self.root = Path(root).expanduser().resolve()

    def path_for(self, key: str) -> Path:
        """The file that holds ``key``; InvalidUriError if it would fall outside the root."""
        validate_key(key, uri=key)
        if key.startswith("/"):
            raise InvalidUriError(f"{key!r} is an absolute path, not a key.", uri=key)
        path = self.root / key
        # resolve() follows symlinks, so a link inside root pointing elsewhere is caught here.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidUriError(f"{key!r} points outside the store.", uri=key)
        return path

    def key_for(self, path: Path) -> str:
        """The key of an absolute ``path`` inside the root; InvalidUriError otherwise."""
        rel = self._inside(path).relative_to(self.root).as_posix()
        return "" if rel == "." else rel

    def _inside(self, path: Path) -> Path:
        """``path`` resolved (symlinks followed); InvalidUriError if that is outside the root."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise InvalidUriError(f"{path} is outside the store at {self.root}.", uri=str(path))
        return resolved

    def _object_path(self, key: str) -> Path:
        if not key or key.endswith("/"):
            raise InvalidUriError(f"{key!r} does not name an object.", uri=key)
        return self.path_for(key)

    def uri_for(self, key: str) -> str:
        return self.path_for(key).as_uri()

    def write_bytes(self, key: str, data: bytes) -> str:
        path = self._object_path(key)
        uri = path.as_uri()
        try:
            try:
                _write_atomically(path, data)
            except FileNotFoundError:  # its folder is new: a mkdir per write costs more
                path.parent.mkdir(parents=True, exist_ok=True)
                _write_atomically(path, data)
        except PermissionError as exc:
            raise AccessDeniedError(f"Writing {uri} was denied.", uri=uri) from exc
        except OSError as exc:
            raise StorageError(f"Writing {uri} failed: {exc.strerror}.", uri=uri) from exc
        return uri

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        return self._read(self._object_path(key), max_bytes)

    def read_file(self, path: Path, *, max_bytes: int | None = None) -> bytes:
        """Bytes of the file at the absolute ``path`` (a ``file://`` URI's), which must lie
        inside the root: one containment check, where the key's round trip would be two."""
        resolved = self._inside(path)
        if resolved == self.root:
            raise InvalidUriError(f"{path} does not name an object.", uri=str(path))
        return self._read(resolved, max_bytes)

    def _read(self, path: Path, max_bytes: int | None) -> bytes:
        uri = path.as_uri()
        try:
            if max_bytes is None:
                return path.read_bytes()
            # Unbuffered: reads land straight in the result, with no second buffer to copy.
            with path.open("rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                check_size(size, max_bytes, uri)
                return read_limited(f.read, expected=size, max_bytes=max_bytes, uri=uri)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFoundError(f"{uri} does not exist.", uri=uri) from exc
        except PermissionError as exc:
            raise AccessDeniedError(f"Reading {uri} was denied.", uri=uri) from exc
        except OSError as exc:
            raise StorageError(f"Reading {uri} failed: {exc.strerror}.", uri=uri) from exc

    def exists(self, key: str) -> bool:
        path = self._object_path(key)
        try:
            return path.is_file()
        except PermissionError as exc:
            uri = path.as_uri()
            raise AccessDeniedError(f"Checking {uri} was denied.", uri=uri) from exc

    def delete_many(self, keys: Sequence[str]) -> None:
        # unlink() removes a link itself, never what it points to, so what must lie inside the
        # root is the folder: resolved once per folder (a thousand stored inputs share 256),
        # not once per key (a realpath walk each). Plain strings: a collection deletes a
        # million, and a Path per key was most of its time.
        root = str(self.root)
        prefix = root.rstrip("/") + "/"
        inside: dict[str, bool] = {}
        for key in keys:
            if not key or key.endswith("/") or key.startswith("/"):
                raise InvalidUriError(f"{key!r} does not name an object.", uri=key)
            validate_key(key, uri=key)
            folder = key.rpartition("/")[0]
            if folder not in inside:
                real = os.path.realpath(prefix + folder)
                inside[folder] = real == root or real.startswith(prefix)
            if not inside[folder]:
                raise InvalidUriError(f"{key!r} points outside the store.", uri=key)
            path = prefix + key
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except PermissionError as exc:
                uri = Path(path).as_uri()
                raise AccessDeniedError(f"Deleting {uri} was denied.", uri=key) from exc
            except OSError as exc:
                uri = Path(path).as_uri()
                raise StorageError(f"Deleting {uri} failed: {exc.strerror}.", uri=uri) from exc

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Same string-prefix semantics as S3: "a/b" matches "a/b.jpg" and "a/b/c.jpg".
        # Only the directory part of the prefix is walked, so listing stays proportional.
        validate_key(prefix, uri=prefix)
        directory, _, _ = prefix.rpartition("/")
        start = self.path_for(directory) if directory else self.root
        return (info for info in self._walk(start) if info.key.startswith(prefix))

    def _walk(self, directory: Path) -> Iterator[ObjectInfo]:
        root = str(self.root)
        return self._walk_folder(str(directory), len(root) if root.endswith("/") else len(root) + 1)

    def _walk_folder(self, folder: str, skip: int) -> Iterator[ObjectInfo]:
        # Plain strings, not a Path per entry: a schedule lists its whole folder at every
        # firing, and three Path objects per file were most of a 1,000-file listing.
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        except PermissionError as exc:
            uri = Path(folder).as_uri()
            raise AccessDeniedError(f"Listing {uri} was denied.", uri=uri) from exc
        for entry in entries:
            # Symlinks are never followed: the store never creates them, and following one
            # could list files outside the root.
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk_folder(entry.path, skip)
            elif entry.is_file(follow_symlinks=False) and not _is_temp(entry.name):
                stat = entry.stat(follow_symlinks=False)
                yield ObjectInfo(
                    # What Path.as_uri() gives, without building a Path.
                    uri="file://" + quote_from_bytes(os.fsencode(entry.path)),
                    key=entry.path[skip:],
                    size=stat.st_size,
                    etag=f"{stat.st_mtime_ns}-{stat.st_size}",
                )


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to stream into that appears at ``path`` whole, or not at all: written to a hidden
    temporary file beside it, flushed to disk, then renamed over ``path`` (the folder is synced
    too, so the rename survives a power cut). An exception, or a process killed meanwhile,
    leaves ``path`` as it was (a killed one leaves its ``.<name>.<random>.tmp`` behind)."""
    with _replacing(path) as f:
        yield f
    _sync_folder(path.parent)


@contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    # Readers see the old file or the new one, never a partial write; the temp file lives in
    # the same directory so os.replace stays a same-filesystem rename.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
    # 0o666 filtered by the umask, like an ordinary open(); mkstemp would force 0o600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform that cannot open a folder (Windows): nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    # Without atomic_file's folder sync, as the store has always written: that would be a
    # second fsync for every stored input.
    with _replacing(path) as f:
        f.write(data)
