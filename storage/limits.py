"""Reading with a byte limit: judged from the size a store reports before the read, and again
while streaming, so an object that is (or grows) too large is never held whole."""

from __future__ import annotations

from collections.abc import Callable

from storage.errors import InputTooLargeError

# Bytes asked for per read once the announced size is read (or when no size was announced).
CHUNK_BYTES = 1 << 20


def check_size(size: int | None, max_bytes: int | None, uri: str) -> None:
    """Refuse an object whose announced ``size`` is over ``max_bytes`` (None: no limit)."""
    if max_bytes is not None and size is not None and size > max_bytes:
        raise InputTooLargeError(
            f"{uri} is {size} bytes, over the limit of {max_bytes} bytes per input.", uri=uri
        )


def read_limited(
    read: Callable[[int], bytes], *, expected: int | None, max_bytes: int, uri: str
) -> bytes:
    """Read a stream to its end, stopping with InputTooLargeError once past ``max_bytes``.

    ``read(n)`` returns at most ``n`` bytes, and ``b""`` at the end. ``expected`` (the announced
    size, already checked against ``max_bytes``) is read in one call, so the usual case makes no
    copy; more data than announced is read in chunks. Never holds more than ``max_bytes`` plus
    one chunk (and, only when the size was unknown or wrong, one copy to join the chunks).
    """
    parts: list[bytes] = []
    total = 0
    want = expected if expected is not None and 0 < expected <= max_bytes else CHUNK_BYTES
    while chunk := read(want):
        total += len(chunk)
        if total > max_bytes:
            raise InputTooLargeError(
                f"{uri} is over the limit of {max_bytes} bytes per input "
                f"(at least {total} bytes were read).",
                uri=uri,
            )
        parts.append(chunk)
        want = CHUNK_BYTES
    return parts[0] if len(parts) == 1 else b"".join(parts)
