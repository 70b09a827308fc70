"""Header rewriting between a preview host and the dev server behind it: pure values, no sockets.

The dev server must see itself addressed by its own origin, and the browser must only ever see the
preview host. Invariants, both ways:

- Hop-by-hop headers (RFC 9110 §7.6.1: Connection, Keep-Alive, TE, Trailer, Transfer-Encoding,
  Upgrade), any `proxy-*` header and any header the Connection header names never cross the gateway.
- Host and Expect are never forwarded: the HTTP or websocket client addresses the upstream by its
  netloc itself (so dev-origin guards such as Vite's `allowedHosts` pass), and answers no 100-continue.
- The gateway sets X-Forwarded-Host (the preview host as received) and X-Forwarded-Proto (the preview
  scheme) itself, ignoring the browser's; the browser's address is appended to any X-Forwarded-For.
- An Origin or Referer naming the preview hostname (at any port) names the upstream origin instead,
  so Next.js `allowedDevOrigins` passes; a Referer keeps its path and query. Any other Origin is
  forwarded unchanged, so the dev server can still refuse a foreign site.
- A Location naming the upstream origin (same scheme and port; for a loopback upstream, any loopback
  name) names the preview origin instead, keeping path, query and fragment. Relative ones stay.
- Authorization never reaches a tenant: whatever the browser holds for the service is not the dev
  server's.
- Cookies are confined to the preview host (`cookies.py`): the dev server gets only the cookies it
  set through this preview host, under their own names; every Set-Cookie comes back in order,
  renamed into the host's namespace and host-only (no Domain). A Clear-Site-Data naming cookies
  (which would clear the whole registrable domain's) never reaches the browser. The gateway's HTTP
  client keeps no cookie (see `proxy.py`).
- A websocket handshake carries only Cookie, Accept-Language and the X-Forwarded-* headers; Origin
  and User-Agent go to the websocket client as its own parameters.

Request header names are lowercase, as ASGI gives them; response header names are lowercased here.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from realtime.preview.cookies import confine_set_cookie, cookie_namespace, forward_cookie

__all__ = ["DEFAULT_PORTS", "HeaderRewrite", "Headers", "UpstreamOrigin"]

#: Raw header pairs, as in an ASGI scope or an HTTP response.
Headers = list[tuple[bytes, bytes]]

DEFAULT_PORTS = {"http": 80, "https": 443}

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"expect"}
)
_SET_BY_GATEWAY = frozenset({b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-for"})
_WEBSOCKET_FORWARDED = frozenset({b"cookie", b"accept-language"})
_NEVER_FORWARDED = frozenset({b"authorization"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True)
class UpstreamOrigin:
    """The dev server's origin, split: scheme, lowercased host (an IPv6 one without brackets) and port."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, origin: str) -> UpstreamOrigin:
        """Split an http(s) origin such as `http://127.0.0.1:5173`; a missing port is the scheme's default.

        Raises:
            ValueError: `origin` is not http(s), has no host, or has a malformed port.
        """
        parts = urlsplit(origin)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"expected an http(s) origin, got {origin!r}")
        port = parts.port
        return cls(parts.scheme, parts.hostname, DEFAULT_PORTS[parts.scheme] if port is None else port)

    @property
    def netloc(self) -> str:
        """Host and port as the upstream expects them in Host: the port only where it is not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        """The normalised origin, `scheme://netloc`."""
        return f"{self.scheme}://{self.netloc}"


@dataclass(frozen=True, slots=True)
class HeaderRewrite:
    """The two ends of one proxied request, and the header rewriting between them.

    Args:
        preview_scheme: the public scheme of preview URLs (`http` or `https`).
        preview_host: the Host header as the browser sent it (any case, with or without a port).
        upstream: the dev server's origin.
    """

    preview_scheme: str
    preview_host: str
    upstream: UpstreamOrigin

    @property
    def preview_origin(self) -> str:
        """The origin the browser addressed, which a Location naming the upstream is rewritten to."""
        return f"{self.preview_scheme}://{self.preview_host}"

    @property
    def preview_hostname(self) -> str:
        """The preview host lowercased, without port or trailing dot."""
        return self.preview_host.strip().lower().partition(":")[0].removesuffix(".")

    @property
    def cookie_namespace(self) -> bytes:
        """The prefix of the names of the cookies this preview host's tenant set (see `cookies.py`)."""
        return cookie_namespace(self.preview_hostname)

    def request_headers(self, raw: Headers, client_host: str | None) -> Headers:
        """The headers to send upstream for the browser's `raw` ones, from a browser at `client_host`."""
        dropped = _connection_tokens(raw) | _NEVER_FORWARDED
        namespace = self.cookie_namespace
        forwarded_for: list[bytes] = []
        headers: Headers = []
        for name, value in raw:
            if name in _HOP_BY_HOP or name in dropped or name.startswith(b"proxy-"):
                continue
            if name in _SET_BY_GATEWAY:
                if name == b"x-forwarded-for":
                    forwarded_for.append(value)
                continue
            if name in (b"origin", b"referer"):
                value = self._to_upstream(value, keep_path=name == b"referer")
            elif name == b"cookie":
                if (cookie := forward_cookie(value, namespace)) is None:
                    continue
                value = cookie
            headers.append((name, value))
        if client_host is not None:
            forwarded_for.append(client_host.encode("latin-1"))
        headers.append((b"x-forwarded-host", self.preview_host.encode("latin-1")))
        headers.append((b"x-forwarded-proto", self.preview_scheme.encode("ascii")))
        if forwarded_for:
            headers.append((b"x-forwarded-for", b", ".join(forwarded_for)))
        return headers

    def websocket_headers(self, raw: Headers, client_host: str | None) -> list[tuple[str, str]]:
        """The extra headers of the upstream websocket handshake (Origin and User-Agent not among them)."""
        return [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self.request_headers(raw, client_host)
            if name in _WEBSOCKET_FORWARDED or name in _SET_BY_GATEWAY
        ]

    def websocket_origin(self, raw: Headers) -> str | None:
        """The Origin for the upstream websocket handshake: the browser's, rewritten; None if it sent none."""
        origin = next((value for name, value in raw if name == b"origin"), None)
        if origin is None:
            return None
        return self._to_upstream(origin, keep_path=False).decode("latin-1")

    def response_headers(self, raw: Headers) -> Headers:
        """The headers to send the browser for the upstream's `raw` ones, names lowercased."""
        dropped = _connection_tokens(raw)
        namespace, https = self.cookie_namespace, self.preview_scheme == "https"
        headers: Headers = []
        for name, value in raw:
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower in dropped or lower.startswith(b"proxy-"):
                continue
            if lower == b"location":
                value = self._to_preview(value)
            elif lower == b"set-cookie":
                if (cookie := confine_set_cookie(value, namespace, https=https)) is None:
                    continue
                value = cookie
            elif lower == b"clear-site-data" and (b"cookies" in value or b"*" in value):
                continue
            headers.append((lower, value))
        return headers

    def _to_upstream(self, value: bytes, *, keep_path: bool) -> bytes:
        """Rewrite an Origin or Referer naming the preview host so that it names the upstream origin."""
        parts = urlsplit(value.decode("latin-1"))
        if parts.hostname is None or parts.hostname != self.preview_hostname:
            return value
        rewritten = self.upstream.origin
        if keep_path:
            rewritten += (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return rewritten.encode("latin-1")

    def _to_preview(self, value: bytes) -> bytes:
        """Rewrite a Location naming the upstream origin (or its loopback twin) back to the preview origin."""
        upstream = self.upstream
        parts = urlsplit(value.decode("latin-1"))
        if not parts.netloc or (parts.scheme and parts.scheme != upstream.scheme):
            return value
        try:
            port = parts.port or DEFAULT_PORTS[upstream.scheme]
        except ValueError:
            return value
        host = parts.hostname or ""
        same_host = host == upstream.host or (host in _LOOPBACK and upstream.host in _LOOPBACK)
        if not same_host or port != upstream.port:
            return value
        rest = parts.path + (f"?{parts.query}" if parts.query else "")
        rest += f"#{parts.fragment}" if parts.fragment else ""
        return (self.preview_origin + (rest or "/")).encode("latin-1")


def _connection_tokens(raw: Headers) -> frozenset[bytes]:
    """The header names any Connection header lists (lowercased), which are hop-by-hop too."""
    return frozenset(
        token.strip().lower() for name, value in raw if name.lower() == b"connection" for token in value.split(b",")
    )
