"""The preview gateway's header rewriting, without sockets: what crosses to the dev server and back."""

from __future__ import annotations

import re

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime.preview.cookies import cookie_namespace
from realtime.preview.headers import HeaderRewrite, Headers, UpstreamOrigin
from realtime.preview.request import request_target

PREVIEW_HOST = "demo-abcdefghij2345672345672345672345.preview.localhost:8000"
PREVIEW_ORIGIN = f"http://{PREVIEW_HOST}"
DEV = "http://127.0.0.1:5173"
NAMESPACE = cookie_namespace(PREVIEW_HOST.partition(":")[0])
HOP_BY_HOP = [b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"expect"]


def rewrite(upstream: str = DEV, host: str = PREVIEW_HOST, scheme: str = "http") -> HeaderRewrite:
    return HeaderRewrite(scheme, host, UpstreamOrigin.parse(upstream))


def upstream_request(raw: Headers, client: str | None = "10.0.0.7", **kwargs: str) -> dict[bytes, list[bytes]]:
    """The request headers the dev server would get, grouped by name."""
    seen: dict[bytes, list[bytes]] = {}
    for name, value in rewrite(**kwargs).request_headers(raw, client):
        seen.setdefault(name, []).append(value)
    return seen


def location(value: str, upstream: str = DEV) -> str:
    """The Location the browser would get for the dev server's `value`."""
    [(name, rewritten)] = rewrite(upstream).response_headers([(b"Location", value.encode())])
    assert name == b"location"
    return rewritten.decode()


# -- what never crosses -------------------------------------------------------------------------------


def test_hop_by_hop_request_headers_are_dropped() -> None:
    """Hop-by-hop headers, Host, Expect and any proxy-* header never reach the dev server."""
    raw = [(name, b"x") for name in HOP_BY_HOP] + [(b"proxy-authorization", b"Basic x"), (b"accept", b"*/*")]
    seen = upstream_request(raw)
    assert seen.keys() == {b"accept", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-for"}


def test_headers_the_connection_header_names_are_dropped_on_requests() -> None:
    """A request header named in Connection (any case, any spacing) is hop-by-hop too."""
    raw = [(b"connection", b"keep-alive, X-Secret ,x-other"), (b"x-secret", b"1"), (b"x-other", b"2")]
    raw.append((b"x-kept", b"3"))
    seen = upstream_request(raw)
    assert b"x-secret" not in seen and b"x-other" not in seen
    assert seen[b"x-kept"] == [b"3"]


def test_hop_by_hop_response_headers_are_dropped_and_names_lowercased() -> None:
    """The browser gets no hop-by-hop, proxy-* or Connection-named response header; the rest lowercased, in order."""
    raw = [
        (b"Connection", b"close, X-Internal"),
        (b"X-Internal", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"Content-Type", b"text/html"),
        (b"ETag", b'"1"'),
    ]
    assert rewrite().response_headers(raw) == [(b"content-type", b"text/html"), (b"etag", b'"1"')]


header_names = st.sampled_from([*HOP_BY_HOP, b"proxy-x", b"x-named", b"x-plain", b"accept", b"cookie"])
header_lists = st.lists(st.tuples(header_names, st.binary(max_size=8)), max_size=12)


@given(header_lists, st.sets(st.sampled_from([b"x-named", b"x-plain"])))
def test_nothing_hop_by_hop_ever_crosses(raw: Headers, named: set[bytes]) -> None:
    """Whatever the headers, neither direction lets through a hop-by-hop, proxy-* or Connection-named one."""
    raw = [(b"connection", b", ".join(sorted(named))), *raw]
    forbidden = {*HOP_BY_HOP, *named}
    for crossed in (rewrite().request_headers(raw, None), rewrite().response_headers(raw)):
        assert not [name for name, _ in crossed if name in forbidden or name.startswith(b"proxy-")]


# -- forwarding ---------------------------------------------------------------------------------------


def test_forwarded_headers_are_set_by_the_gateway() -> None:
    """X-Forwarded-Host and -Proto name the preview, not what the browser sent; its address joins X-Forwarded-For."""
    raw = [(b"x-forwarded-host", b"evil.example"), (b"x-forwarded-proto", b"https"), (b"x-forwarded-for", b"1.2.3.4")]
    seen = upstream_request(raw, scheme="https")
    assert seen[b"x-forwarded-host"] == [PREVIEW_HOST.encode()]
    assert seen[b"x-forwarded-proto"] == [b"https"]
    assert seen[b"x-forwarded-for"] == [b"1.2.3.4, 10.0.0.7"]


def test_no_forwarded_for_without_a_client() -> None:
    """Without a known client and no X-Forwarded-For from the browser, none is sent."""
    assert b"x-forwarded-for" not in upstream_request([], client=None)


def test_cookies_are_confined_to_the_preview_host() -> None:
    """The dev server gets only the cookies of the preview host's namespace, under their own names, and every
    Set-Cookie comes back in order, renamed into that namespace."""
    ns = NAMESPACE
    sent = b"session=parent; " + ns + b"a=1; pvaaaaaaaa_x=9; " + ns + b"b=2"
    assert upstream_request([(b"cookie", sent)])[b"cookie"] == [b"a=1; b=2"]
    assert b"cookie" not in upstream_request([(b"cookie", b"session=parent")])
    raw = [(b"set-cookie", b"a=1; Path=/"), (b"Set-Cookie", b"b=2; HttpOnly")]
    expected = [(b"set-cookie", ns + b"a=1; Path=/"), (b"set-cookie", ns + b"b=2; HttpOnly")]
    assert rewrite().response_headers(raw) == expected


def test_authorization_never_reaches_the_dev_server() -> None:
    """Whatever the browser sends as Authorization (the service's token, say) is not forwarded."""
    seen = upstream_request([(b"authorization", b"Bearer service-token"), (b"accept", b"*/*")])
    assert b"authorization" not in seen
    assert seen[b"accept"] == [b"*/*"]


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (b"a=1; Domain=.preview.localhost; Path=/", b"a=1; Path=/"),
        (b"a=1; domain=localhost", b"a=1"),
        (b"a=1;Domain=" + PREVIEW_HOST.partition(":")[0].encode() + b";path=/app", b"a=1; Path=/app"),
        (b"a=1; Path=relative; Max-Age=60; Expires=Wed, 21 Oct 2037 07:28:00 GMT", None),
        (b"a=1; SameSite=none", b"a=1; SameSite=None; Secure"),
        (b"a=1; samesite=LAX; httponly", b"a=1; SameSite=Lax; HttpOnly"),
        (b"a=1; SameSite=bogus; Priority=High; Partitioned", b"a=1; Secure; Partitioned"),
        (b" a = x=y ", b"a=x=y"),
        (b"no-name-or-value", b""),
        (b"=nameless", b""),
    ],
)
def test_set_cookie_is_host_only_with_known_attributes(sent: bytes, expected: bytes | None) -> None:
    """A tenant's Set-Cookie loses its Domain and any unknown attribute, keeps a sane Path, and a SameSite=None
    or Partitioned cookie is Secure; a cookie without a name is dropped."""
    if expected is None:
        expected = b"a=1; Max-Age=60; Expires=Wed, 21 Oct 2037 07:28:00 GMT"
    crossed = rewrite().response_headers([(b"set-cookie", sent)])
    assert crossed == ([(b"set-cookie", NAMESPACE + expected)] if expected else [])


def test_every_cookie_of_an_https_preview_is_secure() -> None:
    """On an https preview every cookie the tenant sets is Secure."""
    crossed = rewrite(scheme="https").response_headers([(b"set-cookie", b"a=1; Path=/")])
    assert crossed == [(b"set-cookie", NAMESPACE + b"a=1; Path=/; Secure")]


def test_each_preview_host_has_its_own_namespace() -> None:
    """Two preview hosts never share a cookie namespace, and port and case do not change it."""
    other = "demo-abcdefghij2345672345672345672346.preview.localhost:8000"
    assert rewrite(host=other).cookie_namespace != NAMESPACE
    assert rewrite(host=PREVIEW_HOST.upper().replace(":8000", ":9000")).cookie_namespace == NAMESPACE
    assert re.fullmatch(rb"pv[a-z2-7]{8}_", NAMESPACE)


@given(st.binary(max_size=60))
def test_no_set_cookie_ever_names_a_domain(sent: bytes) -> None:
    """Whatever a tenant sends as Set-Cookie, the browser gets it host-only, in the host's namespace, or not at all."""
    for _, value in rewrite().response_headers([(b"set-cookie", sent)]):
        assert value.startswith(NAMESPACE)
        attributes = [part.strip().partition(b"=")[0].lower() for part in value.split(b";")[1:]]
        assert b"domain" not in attributes


@given(st.lists(st.tuples(st.sampled_from([b"", NAMESPACE, b"pv", b"pvaaaaaaaa_"]), st.binary(max_size=12))))
def test_only_the_namespace_cookies_are_forwarded(pairs: list[tuple[bytes, bytes]]) -> None:
    """Whatever the browser's Cookie header holds, the dev server gets only pairs it sent with the namespace."""
    sent = b"; ".join(prefix + rest for prefix, rest in pairs)
    # The pairs as the header holds them (a `;` in a generated value starts another pair).
    namespaced = {piece.strip() for piece in sent.split(b";") if piece.strip().startswith(NAMESPACE)}
    for forwarded in upstream_request([(b"cookie", sent)]).get(b"cookie", []):
        for pair in forwarded.split(b"; "):
            assert any(original.endswith(pair) for original in namespaced)


@pytest.mark.parametrize(("value", "kept"), [(b'"cookies"', False), (b'"*"', False), (b'"cache", "storage"', True)])
def test_clear_site_data_cannot_clear_cookies(value: bytes, kept: bool) -> None:
    """Clear-Site-Data naming cookies (which clears the whole registrable domain's) never reaches the browser."""
    assert bool(rewrite().response_headers([(b"clear-site-data", value)])) is kept


# -- Origin and Referer go to the upstream origin -----------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (PREVIEW_ORIGIN, DEV),
        (PREVIEW_ORIGIN.upper(), DEV),
        ("http://demo-abcdefghij2345672345672345672345.preview.localhost", DEV),  # any port
        ("https://evil.example", "https://evil.example"),
        ("null", "null"),
    ],
)
def test_origin_naming_the_preview_names_the_upstream(sent: str, expected: str) -> None:
    """An Origin naming the preview hostname names the dev server's origin; any other stays as sent."""
    assert upstream_request([(b"origin", sent.encode())])[b"origin"] == [expected.encode()]


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (f"{PREVIEW_ORIGIN}/page?x=1#frag", f"{DEV}/page?x=1"),
        (PREVIEW_ORIGIN, f"{DEV}/"),
        ("https://elsewhere.example/a", "https://elsewhere.example/a"),
    ],
)
def test_referer_naming_the_preview_keeps_its_path(sent: str, expected: str) -> None:
    """A Referer naming the preview names the dev server instead, keeping path and query but no fragment."""
    assert upstream_request([(b"referer", sent.encode())])[b"referer"] == [expected.encode()]


def test_origin_of_a_default_port_upstream_has_no_port() -> None:
    """For an upstream on its scheme's default port the rewritten Origin names no port."""
    seen = upstream_request([(b"origin", PREVIEW_ORIGIN.encode())], upstream="https://abc.modal.host:443")
    assert seen[b"origin"] == [b"https://abc.modal.host"]


# -- Location comes back to the preview origin --------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (f"{DEV}/landed?from=redirect#top", f"{PREVIEW_ORIGIN}/landed?from=redirect#top"),
        (DEV, f"{PREVIEW_ORIGIN}/"),
        (f"{DEV}?q=1", f"{PREVIEW_ORIGIN}?q=1"),  # an empty path stays empty (a browser reads "/")
        ("http://localhost:5173/a", f"{PREVIEW_ORIGIN}/a"),  # the loopback twin
        ("//127.0.0.1:5173/a", f"{PREVIEW_ORIGIN}/a"),  # scheme-relative
        ("/relative/path", "/relative/path"),
        ("http://127.0.0.1:5174/a", "http://127.0.0.1:5174/a"),  # another port
        ("https://127.0.0.1:5173/a", "https://127.0.0.1:5173/a"),  # another scheme
        ("http://127.0.0.1/a", "http://127.0.0.1/a"),  # the default port is not 5173
        ("https://elsewhere.example/a", "https://elsewhere.example/a"),
        ("http://127.0.0.1:bad/a", "http://127.0.0.1:bad/a"),  # a malformed port
    ],
)
def test_location_naming_the_upstream_names_the_preview(sent: str, expected: str) -> None:
    """A Location naming the dev server's origin comes back naming the preview origin; any other stays."""
    assert location(sent) == expected


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("https://abc.modal.host/a", f"{PREVIEW_ORIGIN}/a"),
        ("https://abc.modal.host:443/a", f"{PREVIEW_ORIGIN}/a"),
        ("https://abc.modal.host:8443/a", "https://abc.modal.host:8443/a"),
        ("http://abc.modal.host/a", "http://abc.modal.host/a"),
    ],
)
def test_location_on_a_default_port_upstream(sent: str, expected: str) -> None:
    """For an upstream on its default port, a Location with or without that port is rewritten, another port is not."""
    assert location(sent, upstream="https://abc.modal.host") == expected


def test_loopback_twin_is_only_for_a_loopback_upstream() -> None:
    """A Location naming localhost is not the upstream's when the upstream is a remote host."""
    assert location("https://localhost/a", upstream="https://abc.modal.host") == "https://localhost/a"


# -- the websocket handshake --------------------------------------------------------------------------


def test_websocket_handshake_carries_only_its_cookies_and_forwarding() -> None:
    """The upstream handshake gets the preview host's cookies, Accept-Language and X-Forwarded-*, nothing else
    (no Authorization)."""
    raw = [
        (b"host", PREVIEW_HOST.encode()),
        (b"origin", PREVIEW_ORIGIN.encode()),
        (b"user-agent", b"ua/1"),
        (b"sec-websocket-key", b"k"),
        (b"cookie", b"session=parent; " + NAMESPACE + b"a=1"),
        (b"accept-language", b"en"),
        (b"authorization", b"Bearer t"),
    ]
    assert rewrite().websocket_headers(raw, "10.0.0.7") == [
        ("cookie", "a=1"),
        ("accept-language", "en"),
        ("x-forwarded-host", PREVIEW_HOST),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-for", "10.0.0.7"),
    ]


def test_websocket_origin_names_the_upstream_without_path() -> None:
    """The handshake's Origin names the dev server's origin; without a browser Origin there is none."""
    assert rewrite().websocket_origin([(b"origin", f"{PREVIEW_ORIGIN}/x".encode())]) == DEV
    assert rewrite().websocket_origin([(b"origin", b"https://evil.example")]) == "https://evil.example"
    assert rewrite().websocket_origin([]) is None


# -- the upstream origin and the request target -------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:5173",
        "http://127.0.0.1:80",
        "HTTP://LocalHost:5173/",
        "https://abc.modal.host",
        "http://[::1]:5173",
    ],
)
def test_upstream_origin_agrees_with_the_http_client(origin: str) -> None:
    """The origin an Origin is rewritten to is the one the HTTP client addresses (its Host header)."""
    parsed, url = UpstreamOrigin.parse(origin), httpx.URL(origin)
    assert (parsed.scheme, parsed.host, parsed.netloc) == (url.scheme, url.host, url.netloc.decode())
    assert parsed.origin == f"{url.scheme}://{url.netloc.decode()}"


@pytest.mark.parametrize("origin", ["ftp://127.0.0.1:21", "127.0.0.1:5173", "http://:80"])
def test_upstream_origin_must_be_http(origin: str) -> None:
    """Only an http(s) origin with a host is an upstream."""
    with pytest.raises(ValueError, match="origin"):
        UpstreamOrigin.parse(origin)


def test_request_target_keeps_path_and_query_as_received() -> None:
    """The raw path and query go upstream as received, non-ASCII bytes percent-encoded."""
    scope = {"path": "/ignored", "raw_path": "/a%2Fb/é".encode(), "query_string": b"x=1&y=%2F&z"}
    assert request_target(scope) == b"/a%2Fb/%C3%A9?x=1&y=%2F&z"
    assert request_target({"path": "/p", "raw_path": None, "query_string": b""}) == b"/p"
