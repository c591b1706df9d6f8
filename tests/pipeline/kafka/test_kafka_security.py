"""Kafka TLS and SASL: verification on by default, mutual TLS, secrets from files, clear errors.

The embedded broker (Tansu) speaks plain TCP, so TLS is tested through a
TLS-terminating proxy in front of it (the broker advertises the proxy's
port): a real handshake against a certificate signed by a test CA, with the
client certificate required or not.  Tansu's ``--authentication`` requires
SASL and offers SCRAM (no PLAIN), with credentials kept in its storage; its
memory store starts with no users and refuses unauthenticated requests, so no
user can be created and a successful SCRAM login cannot be shown here: the
tests prove the refusals (wrong user, a mechanism it does not offer, no SASL
at all) surface as clear errors, and the exact aiokafka arguments gpuslo
passes.  ``GPUSLO_TEST_KAFKA_*`` runs the suite against a real cluster (README).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gpuslo.pipeline.auth import TokenError
from gpuslo.pipeline.config import ConfigError, ConsumerConfig, KafkaConfig, load_config
from gpuslo.pipeline.kafka.broker import EmbeddedBroker, free_port
from gpuslo.pipeline.kafka.client import (
    SampleConsumer,
    SampleProducer,
    TransportError,
    client_options,
    ensure_topics,
)
from gpuslo.pipeline.schema import frame_from_rows

FRAME = frame_from_rows([(1_700_000_000_000, "n1", "dcgm", "m", "gauge", 1.0, "GPU-1", {})])


# ------------------------------------------------------------------ the arguments aiokafka gets


def test_plaintext_passes_no_tls_and_no_sasl() -> None:
    opts = client_options(KafkaConfig(bootstrap_servers="k:9092"))
    assert opts == {"bootstrap_servers": "k:9092", "client_id": "gpuslo",
                    "request_timeout_ms": 30_000, "security_protocol": "PLAINTEXT"}


def test_ssl_verifies_certificates_and_host_names_by_default() -> None:
    opts = client_options(KafkaConfig(bootstrap_servers="k:9093", security_protocol="SSL"))
    ctx = opts["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert "sasl_mechanism" not in opts


def test_ssl_verification_is_off_only_when_asked_by_name() -> None:
    cfg = KafkaConfig(bootstrap_servers="k:9093", security_protocol="SSL",
                      ssl_insecure_skip_verify=True)
    ctx = client_options(cfg)["ssl_context"]
    assert ctx.verify_mode is ssl.CERT_NONE and not ctx.check_hostname


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_passes_the_mechanism_user_and_password(mechanism: str) -> None:
    cfg = KafkaConfig(bootstrap_servers="k:9093", security_protocol="SASL_SSL",
                      sasl_mechanism=mechanism, sasl_username="gpuslo",  # type: ignore[arg-type]
                      sasl_password=SecretStr("pw-123"))
    opts = client_options(cfg)
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == mechanism
    assert opts["sasl_plain_username"] == "gpuslo" and opts["sasl_plain_password"] == "pw-123"
    assert opts["ssl_context"].verify_mode is ssl.CERT_REQUIRED


def test_the_sasl_password_file_is_read_when_a_client_connects(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("first-pw\n")
    cfg = KafkaConfig(bootstrap_servers="k:9092", security_protocol="SASL_PLAINTEXT",
                      sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                      sasl_password_file=secret)
    assert client_options(cfg)["sasl_plain_password"] == "first-pw"
    secret.write_text("rotated-pw\n")  # a rotated Secret: the next client gets it
    assert client_options(cfg)["sasl_plain_password"] == "rotated-pw"
    secret.unlink()
    with pytest.raises(TokenError, match=r"cannot stat Kafka SASL password file .*password"):
        client_options(cfg)


def test_a_client_certificate_that_cannot_be_loaded_is_named(tmp_path: Path) -> None:
    cert, key = tmp_path / "user.crt", tmp_path / "user.key"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    cfg = KafkaConfig(bootstrap_servers="k:9093", security_protocol="SSL",
                      ssl_certfile=cert, ssl_keyfile=key)
    with pytest.raises(TransportError, match=r"kafka TLS: cannot load ssl_certfile .*user\.crt, "
                                             r"ssl_keyfile .*user\.key") as info:
        client_options(cfg)
    assert not info.value.retriable


@pytest.mark.parametrize(("settings", "problem"), [
    ({"ssl_cafile": "/ca.pem"}, "ssl_cafile need security_protocol SSL or SASL_SSL (it is "
                                "PLAINTEXT)"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u",
      "sasl_password": "p", "ssl_insecure_skip_verify": True},
     "ssl_insecure_skip_verify need security_protocol SSL or SASL_SSL (it is SASL_PLAINTEXT)"),
    ({"security_protocol": "SSL", "ssl_certfile": "/c.pem"},
     "ssl_certfile and ssl_keyfile go together"),
    ({"security_protocol": "SSL", "ssl_cafile": "/ca.pem", "ssl_insecure_skip_verify": True},
     "set ssl_cafile or ssl_insecure_skip_verify, not both"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
     "security_protocol SASL_* needs sasl_mechanism, sasl_username and sasl_password (or "
     "sasl_password_file)"),
    ({"sasl_password": "p", "sasl_password_file": "/p"},
     "set sasl_password or sasl_password_file, not both"),
])
def test_inconsistent_kafka_security_settings_are_refused(
    settings: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={f"GPUSLO_KAFKA__{k.upper()}": str(v).lower()
                                   if isinstance(v, bool) else str(v)
                                   for k, v in settings.items()})
    assert info.value.problems == [f"kafka: {problem}"]


# ------------------------------------------------------------------ certificates and a TLS proxy


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make test certificates")
    d = tmp_path_factory.mktemp("kafka-pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", str(d / f"{ca}.key"), "-out",
                 str(d / f"{ca}.pem"), "-days", "1", "-subj", f"/CN=gpuslo test {ca}",
                 "-addext", "basicConstraints=critical,CA:TRUE")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-new", *ec, "-keyout", str(d / f"{name}.key"), "-out",
                 str(d / f"{name}.csr"), "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
                 "-out", str(d / f"{name}.pem"), "-extfile", str(d / f"{name}.ext"))
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
               d / "client.key", d / "other-ca.pem")


class TlsProxy:
    """Terminates TLS on ``port`` and pipes each connection to the broker in plain TCP."""

    def __init__(self, pki: Pki, *, require_client_cert: bool) -> None:
        self.port = free_port()
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(pki.server_cert, pki.server_key)
        if require_client_cert:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(pki.ca)
        self.target = 0
        self.handshakes_refused = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self, target_port: int) -> None:
        self.target = target_port
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                  ssl=self.ctx, ssl_handshake_timeout=5)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._pipes):
                t.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()


@contextlib.asynccontextmanager
async def tls_broker(pki: Pki, *, require_client_cert: bool) -> AsyncIterator[str]:
    proxy = TlsProxy(pki, require_client_cert=require_client_cert)
    async with EmbeddedBroker(advertised_port=proxy.port) as broker:
        await proxy.start(broker.port)
        try:
            yield f"127.0.0.1:{proxy.port}"
        finally:
            await proxy.stop()


async def _round_trip(cfg: KafkaConfig) -> int:
    """Create a topic, produce one frame and consume it back; the rows read."""
    topic = f"tls.{uuid.uuid4().hex[:8]}"
    await ensure_topics(cfg, [topic], partitions=1)
    async with SampleProducer(cfg) as producer:
        await producer.send_frame(topic, "n1", FRAME)
    consumer_cfg = ConsumerConfig(poll_timeout_ms=500, session_timeout_ms=6000)
    async with SampleConsumer(cfg, consumer_cfg, [topic],
                              group_id=f"tls-{uuid.uuid4().hex[:8]}") as consumer:
        for _ in range(40):
            batches = await consumer.poll()
            if batches:
                return sum(b.frame.height for b in batches if b.frame is not None)
    return 0


def _ssl_cfg(servers: str, **tls: Any) -> KafkaConfig:
    return KafkaConfig.model_validate({"bootstrap_servers": servers, "security_protocol": "SSL",
                                       "request_timeout_ms": 5000, "linger_ms": 5, **tls})


@pytest.mark.integration
async def test_tls_with_the_brokers_ca_round_trips(pki: Pki) -> None:
    async with tls_broker(pki, require_client_cert=False) as servers:
        assert await _round_trip(_ssl_cfg(servers, ssl_cafile=str(pki.ca))) == 1


@pytest.mark.integration
@pytest.mark.parametrize("ca", ["system store", "another CA"])
async def test_tls_refuses_a_broker_it_cannot_verify_and_says_why(pki: Pki, ca: str) -> None:
    tls = {} if ca == "system store" else {"ssl_cafile": str(pki.other_ca)}
    async with tls_broker(pki, require_client_cert=False) as servers:
        with pytest.raises(TransportError) as info:
            async with SampleProducer(_ssl_cfg(servers, **tls)):
                pass
    message = str(info.value)
    assert message.startswith(f"cannot connect producer to {servers}: KafkaConnectionError")
    assert "CERTIFICATE_VERIFY_FAILED" in message, message


@pytest.mark.integration
async def test_tls_verification_is_skipped_only_when_asked(pki: Pki) -> None:
    async with tls_broker(pki, require_client_cert=False) as servers:
        assert await _round_trip(_ssl_cfg(servers, ssl_insecure_skip_verify=True)) == 1


@pytest.mark.integration
async def test_mutual_tls_presents_the_client_certificate(pki: Pki) -> None:
    async with tls_broker(pki, require_client_cert=True) as servers:
        with_cert = _ssl_cfg(servers, ssl_cafile=str(pki.ca), ssl_certfile=str(pki.client_cert),
                             ssl_keyfile=str(pki.client_key))
        assert await _round_trip(with_cert) == 1
        with pytest.raises(TransportError, match="cannot connect producer"):
            async with SampleProducer(_ssl_cfg(servers, ssl_cafile=str(pki.ca))):
                pass


# ------------------------------------------------------------------ SASL against Tansu


@pytest.fixture(scope="module")
def sasl_broker() -> Any:
    with EmbeddedBroker(authentication=True) as broker:
        yield broker


def _sasl_cfg(servers: str, mechanism: str, **more: Any) -> KafkaConfig:
    return KafkaConfig.model_validate({
        "bootstrap_servers": servers, "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism, "sasl_username": "gpuslo", "request_timeout_ms": 5000,
        **more})


@pytest.mark.integration
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_a_refused_scram_login_is_a_clear_error_not_a_key_error(
    sasl_broker: EmbeddedBroker, mechanism: str, tmp_path: Path
) -> None:
    # aiokafka reads a refused SCRAM login as KeyError('v'); it must reach the operator as
    # a TransportError that says what failed, and never quote the password.
    password = tmp_path / "pw"
    password.write_text("no-such-user-pw-4711")
    cfg = _sasl_cfg(sasl_broker.bootstrap_servers, mechanism, sasl_password_file=str(password))
    with pytest.raises(TransportError) as info:
        async with SampleProducer(cfg):
            pass
    message = str(info.value)
    assert "refused the SASL authentication" in message, message
    assert not info.value.retriable
    assert "no-such-user-pw-4711" not in message


@pytest.mark.integration
async def test_a_mechanism_the_broker_does_not_offer_fails_with_the_reason(
    sasl_broker: EmbeddedBroker,
) -> None:
    # Tansu answers PLAIN with UnsupportedSaslMechanism or just drops the connection
    # (it logs NoSharedMechanism); either reason aiokafka logged is in the error.
    cfg = _sasl_cfg(sasl_broker.bootstrap_servers, "PLAIN", sasl_password="plain-pw-0815")
    with pytest.raises(TransportError) as info:
        async with SampleProducer(cfg):
            pass
    message = str(info.value)
    assert message.startswith(f"cannot connect producer to {sasl_broker.bootstrap_servers}")
    assert ("UnsupportedSaslMechanism" in message
            or f'Unable connect to "{sasl_broker.bootstrap_servers}"' in message), message
    assert "plain-pw-0815" not in message


@pytest.mark.integration
async def test_no_sasl_against_a_broker_that_requires_it_fails_to_connect(
    sasl_broker: EmbeddedBroker,
) -> None:
    cfg = KafkaConfig(bootstrap_servers=sasl_broker.bootstrap_servers, request_timeout_ms=5000)
    with pytest.raises(TransportError, match="cannot connect producer"):
        async with SampleProducer(cfg):
            pass
