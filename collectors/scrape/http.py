"""One HTTP GET of a metrics page, with the limits and failure reasons every scrape shares.

Used by the scrape engine and by ``gpuslo scrape`` (the debugging command), so
both say the same thing about the same target.  Guarantees:

* ``timeout_s`` bounds the whole request (connect + headers + body);
* the body is streamed into one buffer and the request aborted as soon as it
  passes ``max_body_bytes`` (a declared ``Content-Length`` over the limit is
  refused before reading anything);
* every failure is a :class:`ScrapeFailed` with a short reason for
  self-metrics (``timeout``, ``connect``, ``tls``, ``token``, ``not_ready``,
  ``http_<code>``, ``too_large``, ``parse``) and a message already passed
  through ``redact``, raised ``from None`` (an aiohttp exception may quote the
  request's headers, so it is never chained into a log).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping

import aiohttp
from yarl import URL

from gpuslo.pipeline.auth import TokenError
from gpuslo.pipeline.errors import GpusloError

_CHUNK = 256 * 1024
# Failures that the next scrape cannot fix without a change on either side.
_NOT_RETRIABLE = frozenset({"tls", "too_large", "too_many_series", "parse"})

HeaderSource = Callable[[], Mapping[str, str]]


class ScrapeFailed(GpusloError):
    """A scrape that produced no samples, with its self-metric reason.

    The target is scraped again on its next tick whatever the reason;
    ``retriable`` says whether that can help without someone changing something
    (a wrong CA bundle or an oversized page will fail again).
    """

    def __init__(self, reason: str, message: str) -> None:
        client_error = reason.startswith("http_4") and reason not in ("http_408", "http_429")
        super().__init__(message, retriable=reason not in _NOT_RETRIABLE and not client_error)
        self.reason = reason


async def fetch_page(
    session: aiohttp.ClientSession,
    url: str,
    *,
    timeout_s: float,
    max_body_bytes: int,
    headers: Mapping[str, str] | None = None,
    header_source: HeaderSource | None = None,
    ssl_context: ssl.SSLContext | None = None,
    redact: Callable[[str], str] = lambda s: s,
    parsed: URL | None = None,
) -> tuple[str, str | None]:
    """GET ``url``: its text and Content-Type.

    ``header_source`` is read before the request (a rotating bearer token).
    ``parsed``: ``url`` as a :class:`yarl.URL`, kept by a caller that fetches it
    again and again (aiohttp parses a string URL on every request).

    Raises:
        ScrapeFailed: see the module docstring for the reasons.
    """
    sent = dict(headers or {})
    if header_source is not None:
        try:
            sent.update(header_source())
        except TokenError as exc:  # names the path, never the token
            raise ScrapeFailed("token", str(exc)) from None
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.get(parsed or url, timeout=timeout, headers=sent,
                               ssl=ssl_context if ssl_context is not None else True,
                               allow_redirects=False) as resp:
            if resp.status == 503:
                raise ScrapeFailed("not_ready", f"{url}: HTTP 503 (not ready yet)")
            if resp.status != 200:
                hint = (" (credentials rejected or lacking permission, e.g. the kubelet's "
                        "nodes/metrics, nodes/stats)" if resp.status in (401, 403) else "")
                raise ScrapeFailed(f"http_{resp.status}", f"{url}: HTTP {resp.status}{hint}")
            declared = resp.content_length
            if declared is not None and declared > max_body_bytes:
                resp.close()
                raise ScrapeFailed("too_large", f"{url}: Content-Length {declared} exceeds "
                                   f"max_body_bytes {max_body_bytes}")
            buf = bytearray()
            async for chunk in resp.content.iter_chunked(_CHUNK):
                buf += chunk
                if len(buf) > max_body_bytes:
                    resp.close()  # stop reading: the rest never leaves the socket buffer
                    raise ScrapeFailed("too_large", f"{url}: body exceeds max_body_bytes "
                                       f"{max_body_bytes}")
            content_type = resp.headers.get("Content-Type")
    except TimeoutError:
        raise ScrapeFailed("timeout", f"{url}: no complete answer within {timeout_s}s") from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise ScrapeFailed("tls", redact(
            f"{url}: TLS verification failed ({exc.certificate_error}); pass the server's CA "
            "bundle (ca_file) or, for a self-signed server, set insecure_skip_verify")) from None
    except aiohttp.ClientSSLError as exc:
        raise ScrapeFailed("tls", redact(f"{url}: TLS error: {exc}")) from None
    except aiohttp.ClientError as exc:
        raise ScrapeFailed("connect", redact(f"{url}: {type(exc).__name__}: {exc}")) from None
    try:
        return buf.decode("utf-8"), content_type
    except UnicodeDecodeError as exc:
        raise ScrapeFailed("parse", f"{url}: payload is not UTF-8 ({exc})") from None


__all__ = ["HeaderSource", "ScrapeFailed", "fetch_page"]
