"""How many wrong tokens the login page hears from one address (docs/review.md#security).

In process: ``serve`` is one process, and a restart forgetting the counts costs an attacker
the restart's time. Not locked: the login page runs on the event loop, one request at a time.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

ATTEMPTS = 5
WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 10_000


def client_key(host: str) -> str:
    """Whom the count is kept for: the address, but for IPv6 its /64, since one host commonly
    holds a whole /64 and could otherwise take a fresh address for every five guesses."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an address (a test client's name, a Unix socket): counted as given
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class LoginThrottle:
    """At most ``attempts`` wrong tokens per address in any ``window`` seconds; past that, the
    address waits until its oldest failure is ``window`` old, and its token is not checked."""

    def __init__(
        self,
        *,
        attempts: int = ATTEMPTS,
        window: float = WINDOW_SECONDS,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # monotonic: a wall clock set back would otherwise lock an address out for that long
        self.attempts = attempts
        self.window = window
        self.max_addresses = max_addresses
        self.clock = clock
        # the failures' times per address, least recently failed first: the one dropped when
        # a flood of addresses reaches the bound
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait_seconds(self, host: str) -> int:
        """0 when ``host`` may try a token now; else the whole seconds until it may."""
        failures = self._failures.get(client_key(host))
        if failures is None or len(failures) < self.attempts:
            return 0
        left = failures[0] + self.window - self.clock()
        return max(0, math.ceil(left))

    def failed(self, host: str) -> None:
        key = client_key(host)
        failures = self._failures.pop(key, None)
        if failures is None:
            failures = deque(maxlen=self.attempts)  # older ones no longer decide anything
            while len(self._failures) >= self.max_addresses:
                self._failures.popitem(last=False)
        failures.append(self.clock())
        self._failures[key] = failures

    def addresses(self) -> int:
        # a method, not __len__: an empty throttle must not be falsy where one is optional
        return len(self._failures)
