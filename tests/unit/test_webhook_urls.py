"""Where a webhook may go (jobs.delivery.urls): https to public addresses, the rest refused with
a stable code unless the settings allow it; and the Standard Webhooks signature that the
snippet in docs/webhooks.md verifies."""

from __future__ import annotations

import pytest

from jobs.delivery.signing import headers, webhook_key
from jobs.delivery.urls import (
    INVALID_NOTIFY_URL,
    NOTIFY_URL_NOT_ALLOWED,
    UnresolvableHostError,
    UrlPolicy,
    check_url,
)
from jobs.errors import RequestError
from tests.receiver import SECRET, documented_verify


def resolving_to(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: the kernel connects to 127.0.0.1
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("fe80::1%eth0", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT, shared
        # Deprecated (RFC 3879) but still routed where a network kept it: Python does not
        # count it private, nor (before 3.12) not global.
        ("fec0::1", "site-local"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    with pytest.raises(RequestError) as refused:
        check_url("https://hooks.example.com/h", UrlPolicy(), resolver=resolving_to(address))
    assert refused.value.code == NOTIFY_URL_NOT_ALLOWED
    assert f"is a {kind} address" in refused.value.message


def test_one_bad_address_among_good_ones_refuses_the_host() -> None:
    """A name that also resolves inside the network could be connected there."""
    with pytest.raises(RequestError) as refused:
        check_url(
            "https://hooks.example.com/h",
            UrlPolicy(),
            resolver=resolving_to("93.184.216.34", "10.0.0.5"),
        )
    assert refused.value.code == NOTIFY_URL_NOT_ALLOWED


def test_a_public_https_url_is_allowed_with_the_addresses_it_was_checked_at() -> None:
    target = check_url(
        "https://hooks.example.com:8443/in?x=1",
        UrlPolicy(),
        resolver=resolving_to("93.184.216.34", "2606:2800:220:1::1"),
    )
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "hooks.example.com",
        8443,
        "/in?x=1",
    )
    assert target.addresses == ("93.184.216.34", "2606:2800:220:1::1")


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://hooks.example.com/h", NOTIFY_URL_NOT_ALLOWED),  # plain http, host not allowed
        ("ftp://hooks.example.com/h", INVALID_NOTIFY_URL),
        ("hooks.example.com/h", INVALID_NOTIFY_URL),
        ("https:///h", INVALID_NOTIFY_URL),
        ("https://user:pw@hooks.example.com/h", INVALID_NOTIFY_URL),
        ("https://hooks.example.com:99999/h", INVALID_NOTIFY_URL),
        ("https://hooks.example.com/a b", INVALID_NOTIFY_URL),
        ("https://hooks.example.com/" + "a" * 2000, INVALID_NOTIFY_URL),
    ],
)
def test_urls_that_are_not_https_urls_are_refused(url: str, code: str) -> None:
    with pytest.raises(RequestError) as refused:
        check_url(url, UrlPolicy(), resolver=resolving_to("93.184.216.34"))
    assert refused.value.code == code
    assert refused.value.message.count(". ") <= 1  # one sentence


def test_the_settings_allow_http_hosts_and_networks() -> None:
    policy = UrlPolicy.of(["127.0.0.1", " Hooks.Internal "], ["127.0.0.0/8", "10.20.0.0/16"])
    assert check_url("http://127.0.0.1:8080/h", policy, resolver=resolving_to("127.0.0.1"))
    assert check_url("http://hooks.internal/h", policy, resolver=resolving_to("10.20.3.4"))
    with pytest.raises(RequestError):  # another private network is still refused
        check_url("http://hooks.internal/h", policy, resolver=resolving_to("10.21.0.1"))


def test_a_host_that_does_not_resolve_is_its_own_error() -> None:
    """At delivery it is tried again later (DNS may answer then); a refusal is not."""
    with pytest.raises(UnresolvableHostError) as refused:
        check_url("https://no-such-host.invalid/h", UrlPolicy())
    assert refused.value.code == INVALID_NOTIFY_URL


def test_the_documented_snippet_verifies_what_is_signed_and_nothing_else() -> None:
    verify = documented_verify()
    key = webhook_key(SECRET)
    import time

    now = int(time.time())
    body = b'{"type":"batch.completed"}'
    signed = headers(key, "msg_1", now, body)
    assert verify(SECRET, signed, body)
    assert not verify(SECRET, signed, body + b" ")
    assert not verify(SECRET, {**signed, "webhook-id": "msg_2"}, body)
    assert not verify(SECRET, headers(key, "msg_1", now - 3600, body), body)  # a replay
    other = "whsec_" + "A" * 32
    assert not verify(other, signed, body)


@pytest.mark.parametrize(
    "secret", ["", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_short", "whsec_***"]
)
def test_a_secret_not_in_the_standard_form_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        webhook_key(secret)
