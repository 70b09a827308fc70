"""The preview gateway's request target and upstream URLs, without sockets: only a path ever follows the origin."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.uri import parse_uri

from realtime.preview.headers import DEFAULT_PORTS, UpstreamOrigin
from realtime.preview.target import MalformedTarget, http_url, origin_form, websocket_uri

UPSTREAMS = [
    UpstreamOrigin.parse("http://127.0.0.1:5173"),
    UpstreamOrigin.parse("http://[::1]:3000"),
    UpstreamOrigin.parse("https://abc.modal.host"),
]


@pytest.mark.parametrize(
    "target",
    [
        b"/",
        b"/@vite/client",
        b"/@fs/home/app/src/main.ts?t=1700000000000",
        b"/node_modules/.vite/deps/react.js?v=1a2b3c4d",
        b"/_next/static/chunks/app/[slug]/page.js",
        b"/__nextjs_original-stack-frame?isServer=false&file=webpack%3A%2F%2F_N_E%2F.%2Fapp%2Fpage.tsx",
        b"/a%2Fb;c=d,e/~f|g^h?q={%22x%22:1}&r=a\\b",
    ],
)
def test_what_browsers_send_goes_upstream_unchanged(target: bytes) -> None:
    """Paths and queries as browsers and dev servers write them (escapes, brackets, `@`) pass unchanged."""
    path, _, query = target.partition(b"?")
    assert origin_form(path, "/ignored", query) == target


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        (b"/\\evil", b"", b"/%5Cevil"),
        (b"/a#b", b"c#d", b"/a%23b?c%23d"),
        (b"/a?b", b"", b"/a%3Fb"),
        (b'/<x>"`{}', b'<x>"', b"/%3Cx%3E%22%60%7B%7D?%3Cx%3E%22"),
        (b"/100%", b"p=100%zz", b"/100%25?p=100%25zz"),
        ("/café".encode(), "q=é".encode(), b"/caf%C3%A9?q=%C3%A9"),
    ],
)
def test_what_could_change_how_the_url_reads_is_percent_encoded(path: bytes, query: bytes, expected: bytes) -> None:
    """Fragment marks, backslashes, quotes, stray `%` and non-ASCII bytes are percent-encoded, never pasted."""
    assert origin_form(path, "/ignored", query) == expected


@pytest.mark.parametrize(
    ("path", "query"),
    [
        (b"@evil:6379/x", b""),
        (b"http://127.0.0.1:6379/", b""),
        (b"evil:6379", b""),
        (b"\\\\evil\\x", b""),
        (b"*", b""),
        (b"/a\x00b", b""),
        (b"/a b", b""),
        (b"/a\r\nX-Injected: 1", b""),
        (b"/ok", b"a=\x7f"),
        (b"/ok", b"a=\n"),
    ],
)
def test_anything_but_a_clean_origin_form_is_malformed(path: bytes, query: bytes) -> None:
    """A target not starting with "/", or with a control character or space anywhere, is refused."""
    with pytest.raises(MalformedTarget):
        origin_form(path, "/ignored", query)


def test_without_raw_path_the_decoded_path_is_encoded_again() -> None:
    """When the server gives no raw path, the decoded one is percent-encoded (a `%` included), never pasted."""
    assert origin_form(None, "/a b/%41/é", b"") == b"/a%20b/%2541/%C3%A9"
    with pytest.raises(MalformedTarget):
        origin_form(None, "@evil:6379/x", b"")


@given(st.binary(max_size=40), st.binary(max_size=40), st.sampled_from(UPSTREAMS))
def test_no_target_ever_leaves_the_upstream_origin(path: bytes, query: bytes, upstream: UpstreamOrigin) -> None:
    """Whatever the path and query, the HTTP URL and websocket URI name the upstream's host and port, or the
    target is refused; and re-encoding a re-encoded target changes nothing."""
    try:
        resource = origin_form(b"/" + path, "/ignored", query)
    except MalformedTarget:
        return
    url = http_url(upstream, resource)
    port = url.port or DEFAULT_PORTS[url.scheme]
    assert (url.scheme, url.host, port) == (upstream.scheme, upstream.host, upstream.port)
    assert url.raw_path == resource
    ws = parse_uri(websocket_uri(upstream, resource))
    assert (ws.host, ws.port, ws.username) == (upstream.host, upstream.port, None)
    again_path, _, again_query = resource.partition(b"?")
    assert origin_form(again_path, "/ignored", again_query) == resource


@pytest.mark.parametrize("resource", [b"", b"@evil/x", b"/a#b", b"/a b"])
def test_url_builders_refuse_what_origin_form_never_returns(resource: bytes) -> None:
    """The URL builders refuse a resource that did not come from `origin_form`."""
    with pytest.raises(MalformedTarget):
        http_url(UPSTREAMS[0], resource)
    with pytest.raises(MalformedTarget):
        websocket_uri(UPSTREAMS[0], resource)
