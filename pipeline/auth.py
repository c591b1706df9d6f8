"""Credentials and TLS for every HTTP client gpuslo runs, written once.

The kubelet collector, pod discovery, the Alertmanager client, OTLP and
Prometheus-as-a-source all authenticate with a bearer token or basic auth and
verify TLS.  Two promises hold for all of them, so they live here:

* verification is on unless a config asks for ``insecure_skip_verify`` by name;
* a credential never reaches a log, an error message, a health row or Kafka:
  it is held as a :class:`Secret` and every message that could quote a request
  is passed through :func:`redact`.

Service-account tokens rotate (the kubelet swaps a ``..data`` symlink), so a
token file is re-read when it changes (:class:`BearerTokenFile`).  Every other
secret may come from a file the same way (a mounted Kubernetes Secret: the
Alertmanager token or password, the receiver's token, the Kafka SASL
password), so nothing secret has to sit in a config file or the environment;
:func:`secret_source` turns a config's ``x`` / ``x_file`` pair into one
:class:`SecretSource`.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr

from gpuslo.pipeline.config import TlsConfig
from gpuslo.pipeline.errors import GpusloError

log = logging.getLogger(__name__)

REDACTED = "<redacted>"
_BEARER = re.compile(r"(Bearer|Basic)\s+[^\s'\",]+")


class Secret:
    """A string that never prints itself: ``repr``/``str``/f-strings show ``<redacted>``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call only where it goes on the wire."""
        return self._value

    def get(self) -> Secret:
        """Itself: a fixed secret is a :class:`SecretSource` that never changes."""
        return self

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact(text: str, secrets: Iterable[Secret | str]) -> str:
    """``text`` with every occurrence of each secret (and any ``Bearer``/``Basic`` value)
    replaced by ``<redacted>``."""
    for s in secrets:
        value = s.reveal() if isinstance(s, Secret) else s
        if value:
            text = text.replace(value, REDACTED)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


class SecretSource(Protocol):
    """Where a secret comes from: a fixed :class:`Secret` or a file re-read on change."""

    def get(self) -> Secret: ...


class TokenError(GpusloError):
    """A secret file cannot be used; the message names the path, never the secret.

    Retriable: a projected token may appear a moment after the pod starts.
    """

    retriable = True


@dataclass
class BearerTokenFile:
    """A token file (the service-account token), re-read when it changes.

    A stat per request (mtime, size, inode) notices a rotation, and
    ``max_age_s`` forces a re-read anyway in case a change kept the same stat.
    A failed re-read keeps serving the last good token and says so in the log
    (by path).
    """

    path: str | os.PathLike[str]
    max_age_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    what: str = "token"  # in messages: "token file ...", "password file ..."
    _token: Secret | None = field(default=None, init=False, repr=False)
    _stat: tuple[int, int, int] | None = field(default=None, init=False, repr=False)
    _read_at: float = field(default=0.0, init=False, repr=False)
    reloads: int = field(default=0, init=False)

    def get(self) -> Secret:
        """The current token.

        Raises:
            TokenError: the file is missing, unreadable or empty and no earlier
                token is known.
        """
        try:
            st = os.stat(self.path)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as exc:
            return self._fail(
                f"cannot stat {self.what} file {os.fspath(self.path)}: {exc.strerror}")
        now = self.clock()
        if self._token is not None and key == self._stat and now - self._read_at < self.max_age_s:
            return self._token
        try:
            value = Path(self.path).read_text().strip()
        except OSError as exc:
            return self._fail(
                f"cannot read {self.what} file {os.fspath(self.path)}: {exc.strerror}")
        except UnicodeDecodeError:
            return self._fail(f"{self.what} file {os.fspath(self.path)} is not UTF-8 text")
        if not value:
            return self._fail(f"{self.what} file {os.fspath(self.path)} is empty")
        if self._token is None or self._token.reveal() != value:
            self.reloads += 1
        self._token, self._stat, self._read_at = Secret(value), key, now
        return self._token

    def _fail(self, message: str) -> Secret:
        if self._token is None:
            raise TokenError(message)
        log.warning("%s; keeping the previous %s", message, self.what)
        return self._token


def secret_source(
    value: SecretStr | None, path: str | os.PathLike[str] | None, *, what: str
) -> SecretSource | None:
    """A config's ``x`` / ``x_file`` pair as one source (None when neither is set).

    The file is read now, so a missing or empty one fails at start-up, naming
    the path; afterwards it is re-read when it changes.

    Raises:
        TokenError: the file cannot be read or is empty.
    """
    if path is not None:
        source = BearerTokenFile(path, what=what)
        source.get()
        return source
    if value is not None:
        return Secret(value.get_secret_value())
    return None


class BearerAuth:
    """``Authorization: Bearer`` headers from a secret source, and the redaction they need.

    Remembers the last two tokens sent, so an error message about a request made
    just before a rotation is still scrubbed.
    """

    def __init__(self, token: SecretSource) -> None:
        self.token = token
        self._sent: list[Secret] = []

    def headers(self) -> dict[str, str]:
        """The header for the next request.

        Raises:
            TokenError: no usable token.
        """
        secret = self.token.get()
        if secret not in self._sent:
            self._sent = [*self._sent[-1:], secret]
        return {"Authorization": "Bearer " + secret.reveal()}

    def redact(self, text: str) -> str:
        return redact(text, self._sent)


class BasicAuth:
    """``Authorization: Basic`` headers with a password from a secret source."""

    def __init__(self, username: str, password: SecretSource) -> None:
        self.username = username
        self.password = password
        self._sent: list[Secret] = []

    def headers(self) -> dict[str, str]:
        """The header for the next request.

        Raises:
            TokenError: no usable password.
        """
        secret = self.password.get()
        if secret not in self._sent:
            self._sent = [*self._sent[-1:], secret]
        return basic_auth_header(self.username, secret.reveal())

    def redact(self, text: str) -> str:
        return redact(text, self._sent)


def basic_auth_header(username: str, password: str) -> dict[str, str]:
    """``Authorization: Basic`` (built here: aiohttp.BasicAuth is deprecated)."""
    pair = f"{username}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


def tls_context(
    *,
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
    insecure: bool = False,
) -> ssl.SSLContext:
    """A client TLS context: verify against ``ca_file`` (or the system store).

    ``cert_file``/``key_file`` add a client certificate (mutual TLS).
    ``insecure=True`` turns verification off, for servers with a self-signed
    certificate (a kubelet's); it must be asked for explicitly.
    """
    ctx = ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file else None)
    if cert_file is not None and key_file is not None:
        ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_context_from(cfg: TlsConfig) -> ssl.SSLContext:
    """:func:`tls_context` for a config's ``tls:`` section."""
    return tls_context(ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file,
                       insecure=cfg.insecure_skip_verify)


__all__ = [
    "REDACTED",
    "BasicAuth",
    "BearerAuth",
    "BearerTokenFile",
    "Secret",
    "SecretSource",
    "TokenError",
    "basic_auth_header",
    "redact",
    "secret_source",
    "tls_context",
    "tls_context_from",
]
