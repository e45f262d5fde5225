"""``serve --host`` as the socket takes it (``jobs.cli.serve.listen_host``): an IPv6 address
bare or in brackets as in a URL, an IPv4 address or a host name; anything else refused."""

from __future__ import annotations

import pytest

from jobs.cli.serve import listen_host
from jobs.errors import RequestError


@pytest.mark.parametrize(
    ("given", "bound"),
    [
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[fe80::1%lo]", "fe80::1%lo"),
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "0.0.0.0"),
        ("localhost", "localhost"),
        ("review.example.com.", "review.example.com."),
        ("review_box", "review_box"),
        ("127.0.0.1.example.invalid", "127.0.0.1.example.invalid"),
    ],
)
def test_an_address_or_name_is_bound_without_brackets(given: str, bound: str) -> None:
    assert listen_host(given) == bound


@pytest.mark.parametrize(
    "given",
    ["[127.0.0.1]", "[localhost]", "[::1", "::1]", "[]", "", "bad host", "-box", "127.0.0.256"],
)
def test_brackets_hold_an_ipv6_address_only_and_a_name_is_a_name(given: str) -> None:
    with pytest.raises(RequestError) as refused:
        listen_host(given)
    assert refused.value.code == "invalid_option"
