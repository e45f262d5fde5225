"""Where a webhook may go: the one policy a ``--notify`` URL meets at submit and again at every
delivery (a name may resolve elsewhere by then).

``https`` only, or ``http`` to a host ``LLAVA_BATCH_WEBHOOK_ALLOW_HTTP_HOSTS`` names; and every
address the host resolves to must be a public one (not loopback, link-local, private, shared,
unspecified, multicast or reserved; an IPv4-mapped IPv6 address is judged as the IPv4 one),
unless it lies in ``LLAVA_BATCH_WEBHOOK_ALLOW_NETWORKS``. Otherwise anyone who may submit could
make the sweeper POST into the deployment's own network (a metadata service, an admin port).

``check_url`` returns the addresses it checked, and the sender connects to those and no
others: a name that resolves to a public address for the check and to a private one for the
connection (DNS rebinding) gets no second lookup to do it with.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from jobs.errors import RequestError

INVALID_NOTIFY_URL = "invalid_notify_url"
NOTIFY_URL_NOT_ALLOWED = "notify_url_not_allowed"
MAX_URL_CHARS = 2000

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]


class UnresolvableHostError(RequestError):
    """The host does not resolve now: refused at submit, tried again later at delivery."""

    code = INVALID_NOTIFY_URL


@dataclass(frozen=True)
class UrlPolicy:
    http_hosts: frozenset[str] = frozenset()  # lower-case host names or addresses
    networks: tuple[Network, ...] = ()  # where a non-public address is still allowed

    @classmethod
    def of(cls, http_hosts: Iterable[str], networks: Iterable[str]) -> UrlPolicy:
        return cls(
            frozenset(host.strip().lower().strip("[]") for host in http_hosts if host.strip()),
            tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks if n.strip()),
        )


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``addresses``, in the resolver's order) and what to ask."""

    scheme: str
    host: str
    port: int
    path: str  # with its query
    addresses: tuple[str, ...]


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the system resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHostError(f"The host {host!r} does not resolve ({exc}).") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(
    url: str, policy: UrlPolicy, *, resolver: Resolver = resolve, what: str = "--notify"
) -> Target:
    """``url`` if the policy allows it, with the addresses it was checked at; RequestError
    (``invalid_notify_url``, ``notify_url_not_allowed``) with one sentence if not, naming the
    URL as ``what`` (the option or setting it came from)."""
    if len(url) > MAX_URL_CHARS or not url.isprintable() or any(c.isspace() for c in url):
        raise RequestError(
            f"{what} must be a URL of at most {MAX_URL_CHARS} printable characters without spaces.",
            code=INVALID_NOTIFY_URL,
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RequestError(
            f"{what} {url!r} is not a URL ({exc}).", code=INVALID_NOTIFY_URL
        ) from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("https", "http") or not host:
        raise RequestError(f"{what} {url!r} is not an https:// URL.", code=INVALID_NOTIFY_URL)
    if parts.username is not None or parts.password is not None:
        raise RequestError(
            f"{what} must not carry a user or password: receivers verify the signature "
            "instead (docs/webhooks.md).",
            code=INVALID_NOTIFY_URL,
        )
    if scheme == "http" and host not in policy.http_hosts:
        raise RequestError(
            f"{what} {url!r} is plain http: use https, or name the host in "
            "LLAVA_BATCH_WEBHOOK_ALLOW_HTTP_HOSTS.",
            code=NOTIFY_URL_NOT_ALLOWED,
        )
    port = port or (443 if scheme == "https" else 80)
    addresses = resolver(host, port)
    if not addresses:
        raise UnresolvableHostError(f"The host {host!r} resolves to no address.")
    for address in addresses:
        refused = refusal(address, policy)
        if refused is not None:
            shown = host if host == address else f"{host} ({address})"
            raise RequestError(
                f"{what} {shown} is a {refused} address: webhooks go to public addresses "
                "only, unless LLAVA_BATCH_WEBHOOK_ALLOW_NETWORKS includes it.",
                code=NOTIFY_URL_NOT_ALLOWED,
            )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme, host, port, path, tuple(addresses))


def refusal(address: str, policy: UrlPolicy) -> str | None:
    """What kind of non-public address ``address`` is (None: one a webhook may go to)."""
    ip: Address = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: drop the zone
    if isinstance(ip, ipaddress.IPv6Address):
        ip = _embedded_ipv4(ip) or ip
    if any(ip in network for network in policy.networks):
        return None
    for kind, found in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        # fec0::/10: deprecated, yet routed inside networks that kept it, and global to Python.
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),  # shared (100.64/10), documentation, 6to4 relays…
    ):
        if found:
            return kind
    return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches: ::ffff:127.0.0.1 is 127.0.0.1 to the kernel, and a
    NAT64 or 6to4 address is routed to its IPv4 one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour
