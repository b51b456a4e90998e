"""The upstream HTTP/1.1 client over TLS, against a loopback HTTPS server with throwaway certificates.

The certificates are made at test time with the `openssl` binary: a trusted CA, a
"rogue" CA nobody trusts, and server certificates signed by them. The client has no
CA or verify setting of its own: it verifies with `ssl.create_default_context()`,
so the system trust store applies and a private CA is trusted the OpenSSL way, by
pointing SSL_CERT_FILE at it (read when the client first makes its context).
Every test runs on both the asyncio and the uvloop event loop (production is uvloop).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from llmgate.http1 import Http1Client, UpstreamUnreachable
from llmgate.upstream import transport_error

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Any]

_MIN_CONFIG = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n"


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA the tests trust
    good: Pem  # signed by `ca`, for localhost and 127.0.0.1
    rogue: Pem  # for localhost and 127.0.0.1, signed by a CA nobody trusts
    other_name: Pem  # signed by `ca`, for other.example only


def _run(openssl: str, *args: str) -> None:
    subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30)


def _make_ca(openssl: str, directory: Path, name: str, config: Path) -> Pem:
    ca = Pem(directory / f"{name}.pem", directory / f"{name}.key")
    _run(
        openssl, "req", "-x509", "-new", "-config", str(config),
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(ca.key), "-out", str(ca.cert), "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    return ca


def _make_leaf(openssl: str, directory: Path, name: str, config: Path, ca: Pem, alt_names: str, serial: int) -> Pem:
    leaf = Pem(directory / f"{name}.pem", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        f"subjectAltName = {alt_names}\n"
        "basicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid:always\n"
    )
    _run(
        openssl, "req", "-new", "-config", str(config),
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(leaf.key), "-out", str(csr), "-subj", f"/CN={name}",
    )  # fmt: skip
    _run(
        openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(serial), "-days", "2", "-out", str(leaf.cert), "-extfile", str(extensions),
    )  # fmt: skip
    return leaf


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl binary is not installed: these tests make their certificates with it")
    directory = tmp_path_factory.mktemp("tls")
    config = directory / "openssl.cnf"
    config.write_text(_MIN_CONFIG)
    ca = _make_ca(openssl, directory, "llmgate-test-ca", config)
    rogue_ca = _make_ca(openssl, directory, "rogue-ca", config)
    here = "DNS:localhost,IP:127.0.0.1"
    return Certs(
        ca=ca.cert,
        good=_make_leaf(openssl, directory, "good", config, ca, here, 1),
        rogue=_make_leaf(openssl, directory, "rogue", config, rogue_ca, here, 2),
        other_name=_make_leaf(openssl, directory, "other", config, ca, "DNS:other.example", 3),
    )


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@pytest.fixture
def trust_ca(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test CA is the only trusted one (the client's context reads this when first made)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    yield


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    c = Http1Client()
    yield c
    await c.aclose()


class TlsServer:
    """An HTTPS server on 127.0.0.1 answering each request with the script; records what it saw."""

    def __init__(self, pem: Pem, script: Script) -> None:
        self.script = script
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pem.cert, pem.key)
        self.context.sni_callback = self._sni
        self.server_names: list[str | None] = []
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    def _sni(self, sslobj: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        self.server_names.append(server_name)

    async def __aenter__(self) -> TlsServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def url(self, host: str = "127.0.0.1", path: str = "/v1/chat/completions") -> str:
        return f"https://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1  # counted after the handshake: a refused certificate never gets here
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if await self.script(reader, writer, body) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


def respond(raw: bytes) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(raw)
        await writer.drain()

    return script


OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nx-a: 1\r\nx-a: 2\r\n\r\n{"ok":true}'
CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"


async def test_a_request_over_tls_and_the_connection_is_reused(
    trust_ca: None, certs: Certs, client: Http1Client
) -> None:
    async with TlsServer(certs.good, respond(OK)) as server:
        response = await client.open("POST", server.url(), {"authorization": "Bearer k"}, b"{}")
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-a"] == "1, 2"
        assert await response.read() == b'{"ok":true}'
        assert response.complete
        Http1Client.finish(response)

        status, headers, body = await client.request("POST", server.url(), {}, b"{}")
        assert (status, headers["content-length"], body) == (200, "11", b'{"ok":true}')
    assert server.connections == 1
    assert len(server.requests) == 2 and server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}\r\n".encode() in first
    assert b"authorization: Bearer k\r\n" in first and first.endswith(b"content-length: 2\r\n\r\n{}")


async def test_a_chunked_body_is_read_whole_and_streamed(trust_ca: None, certs: Certs, client: Http1Client) -> None:
    async with TlsServer(certs.good, respond(CHUNKED)) as server:
        status, _, body = await client.request("POST", server.url(), {}, b"")
        streamed = await client.open("POST", server.url(), {}, b"")
        chunks = [chunk async for chunk in streamed.iter_chunks()]
        Http1Client.finish(streamed)
        again = await client.request("POST", server.url(), {}, b"")
    assert (status, body) == (200, b"hello world")
    assert b"".join(chunks) == b"hello world"
    assert again[2] == b"hello world"
    assert server.connections == 1


async def test_large_bodies_both_ways_with_reading_paused_and_resumed(
    trust_ca: None, certs: Certs, client: Http1Client
) -> None:
    """A request body past the client's one-write limit, and a response past its high-water mark
    read by a consumer that lags: the TLS transport's reading is paused, then resumed."""
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nx-received: %d\r\ncontent-length: %d\r\n\r\n" % (len(body), len(payload)))
        writer.write(payload)
        await writer.drain()

    request_body = b"q" * 200_000
    async with TlsServer(certs.good, big) as server:
        response = await client.open("POST", server.url(), {}, request_body)
        assert response.headers["x-received"] == str(len(request_body))
        async with asyncio.timeout(10):  # the body arrives while nobody reads it, until
            while not response._conn.paused:  # the high-water mark stops the reading
                await asyncio.sleep(0.01)
        assert await response.read() == payload  # and resumed as the consumer caught up
        Http1Client.finish(response)
        status, _, body = await client.request("POST", server.url(), {}, b"")
    assert (status, body) == (200, payload)
    assert server.requests[0].endswith(request_body)
    assert server.connections == 1


async def test_a_body_delimited_by_close_is_read_and_not_reused(
    trust_ca: None, certs: Certs, client: Http1Client
) -> None:
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
        await writer.drain()
        return False

    async with TlsServer(certs.good, close_delimited) as server:
        assert (await client.request("POST", server.url(), {}, b"x"))[2] == b"all of it"
        assert (await client.request("POST", server.url(), {}, b"x"))[2] == b"all of it"
    assert server.connections == 2


async def test_sni_carries_the_host_name_and_the_certificate_matches_it(
    trust_ca: None, certs: Certs, client: Http1Client
) -> None:
    async with TlsServer(certs.good, respond(OK)) as server:
        status, _, _ = await client.request("POST", server.url("localhost"), {}, b"")
    assert status == 200
    assert "localhost" in server.server_names
    assert f"host: localhost:{server.port}\r\n".encode() in server.requests[0]


async def test_an_untrusted_certificate_is_refused(trust_ca: None, certs: Certs, client: Http1Client) -> None:
    async with TlsServer(certs.rogue, respond(OK)) as server:
        with pytest.raises(UpstreamUnreachable, match="CERTIFICATE_VERIFY_FAILED") as caught:
            await client.request("POST", server.url(), {}, b"")
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(caught.value)
    assert server.requests == []


async def test_the_private_ca_is_not_trusted_by_default(
    certs: Certs, client: Http1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    async with TlsServer(certs.good, respond(OK)) as server:
        with pytest.raises(UpstreamUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            await client.request("POST", server.url(), {}, b"")
    assert server.requests == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_certificate_for_another_name_is_refused(
    host: str, trust_ca: None, certs: Certs, client: Http1Client
) -> None:
    async with TlsServer(certs.other_name, respond(OK)) as server:
        with pytest.raises(UpstreamUnreachable, match="CERTIFICATE_VERIFY_FAILED") as caught:
            await client.request("POST", server.url(host), {}, b"")
    cause = caught.value.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert "mismatch" in (cause.verify_message or "")
    assert server.requests == []


async def test_plain_http_and_https_to_one_port_are_pooled_apart(
    trust_ca: None, certs: Certs, client: Http1Client
) -> None:
    """A plain request to the TLS port fails; the https pool for the same host and port is untouched."""
    async with TlsServer(certs.good, respond(OK)) as server:
        assert (await client.request("POST", server.url(), {}, b""))[0] == 200
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(5):
                await client.request("POST", server.url().replace("https://", "http://"), {}, b"")
        assert (await client.request("POST", server.url(), {}, b""))[0] == 200
    assert len(server.requests) == 2 and server.connections == 1


async def test_the_gateway_error_names_a_refused_certificate(trust_ca: None, certs: Certs, client: Http1Client) -> None:
    async with TlsServer(certs.other_name, respond(OK)) as server:
        with pytest.raises(UpstreamUnreachable) as caught:
            await client.request("POST", server.url(), {}, b"")
        err = transport_error(caught.value, "up", server.url())
    assert err.status == 502
    assert "provider 'up' is unreachable" in err.message
    assert "TLS certificate refused: IP address mismatch" in err.message
