"""The limiter's Redis client: encoding, pipelining, error replies, NOSCRIPT, timeouts, restarts, AUTH, TLS.

Against a real Redis (LLMGATE_TEST_REDIS_URL) and throwaway `redis-server`s; every
networked test runs on both the asyncio and the uvloop event loop.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvloop
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection as RedisPyConnection

from llmgate.throttle.redis import build_client
from llmgate.throttle.resp import (
    SLOT,
    ConnectionFailed,
    NoScriptError,
    NotServingError,
    RespClient,
    ResponseError,
    Script,
    encode_command,
)
from tests.reliability.stores import ThrowawayRedis as RestartableRedis

from .conftest import ThrowawayRedis, delete_keys


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


RUN = uuid.uuid4().hex[:10]


def unique(name: str) -> str:
    """A key of this run's (the `client` fixture deletes them all)."""
    return f"llmgate-test-resp-{RUN}:{name}:{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RespClient]:
    c = build_client(redis_url)
    yield c
    await delete_keys(c, f"llmgate-test-resp-{RUN}:*")
    await c.aclose()


def sent_commands(client: RespClient) -> list[bytes]:
    """Record the name of every command the client sends from now on."""
    names: list[bytes] = []
    original = client.send

    def send(payload: bytes) -> asyncio.Future[Any]:
        names.append(payload.split(b"\r\n")[2])
        return original(payload)

    client.send = send  # type: ignore[method-assign]
    return names


# -- encoding (no server) ---------------------------------------------------------------------

_arg = st.one_of(st.text(max_size=20), st.binary(max_size=20), st.integers(-(2**70), 2**70))
_args = st.lists(_arg, max_size=12)


def redis_py_encoding(*args: Any) -> bytes:
    return b"".join(RedisPyConnection().pack_command(*args))


@given(args=_args)
def test_commands_encode_as_redis_py_does(args: list[Any]) -> None:
    assert encode_command(["SET", *args]) == redis_py_encoding("SET", *args)


@given(
    keys=st.lists(st.text(max_size=10), max_size=5),
    args=st.lists(st.one_of(_arg, st.just(SLOT)), max_size=12),
    data=st.data(),
)
def test_a_script_call_renders_the_command_its_slots_make(keys: list[str], args: list[Any], data: Any) -> None:
    slots = sum(1 for a in args if a is SLOT)
    values = data.draw(st.lists(_arg, min_size=slots, max_size=slots))
    script = Script("return 1")
    call = script.call(keys, args)
    filled = iter(values)
    plain = [next(filled) if a is SLOT else a for a in args]
    assert call.render(values) == redis_py_encoding("EVALSHA", script.sha, len(keys), *keys, *plain)
    assert call.render_eval(values) == redis_py_encoding("EVAL", script.source, len(keys), *keys, *plain)


def test_what_cannot_be_an_argument_is_refused() -> None:
    with pytest.raises(TypeError, match="bool"):
        encode_command(["SET", "k", True])
    with pytest.raises(TypeError, match="dict"):
        encode_command(["SET", "k", {}])
    with pytest.raises(ValueError, match="2 slots, 1 values"):
        Script("return 1").call(["k"], [SLOT, SLOT]).render(["a"])


def test_urls() -> None:
    c = RespClient.from_url("redis://al%40ice:p%3Ass@cache.internal:6380/3?socket_timeout=0.5")
    assert (c.host, c.port, c.db, c.timeout_s, c.connect_timeout_s) == ("cache.internal", 6380, 3, 0.5, 0.5)
    assert c._hello == [encode_command(["AUTH", "al@ice", "p:ss"]), encode_command(["SELECT", 3])]
    c = RespClient.from_url("redis://:secret@127.0.0.1")
    assert (c.port, c.db, c.ssl_context) == (6379, 0, None)
    assert c._hello == [encode_command(["AUTH", "secret"])]
    assert RespClient.from_url("redis://h/?db=2").db == 2
    tls = RespClient.from_url("rediss://h:1/0").ssl_context
    assert tls is not None and tls.verify_mode == ssl.CERT_REQUIRED and tls.check_hostname
    insecure = RespClient.from_url("rediss://h/0?ssl_cert_reqs=none").ssl_context
    assert insecure is not None and insecure.verify_mode == ssl.CERT_NONE
    for url, scheme in [
        ("unix:///var/run/redis.sock", "unix"),
        ("redis+sentinel://h:26379/mymaster", "redis+sentinel"),
        ("http://h", "http"),
    ]:
        with pytest.raises(ValueError, match=re.escape(f"scheme {scheme!r} is not supported")):
            build_client(url)
    with pytest.raises(ValueError, match="unsupported Redis URL options: health_check_interval"):
        build_client("redis://h/0?health_check_interval=3")


# -- against the shared Redis -----------------------------------------------------------------


async def test_replies_come_back_as_sent(client: RespClient) -> None:
    key, value = unique("ключ"), "naïve\r\n$3\r\n" + "x" * 1000
    assert await client.execute("SET", key, value) == b"OK"
    assert await client.execute("GET", key) == value.encode()
    assert await client.execute("SET", key, b"\x00\xff\r\n") == b"OK"
    assert await client.execute("GET", key) == b"\x00\xff\r\n"
    assert await client.execute("GET", unique("missing")) is None
    assert await client.execute("INCRBY", unique("n"), -(2**62)) == -(2**62)
    assert await client.execute("ECHO", 12.5) == b"12.5"
    assert await client.execute("EVAL", "return {1, 'two', {3}, KEYS[1]}", 1, "k") == [1, b"two", [3], b"k"]
    assert await client.ping() is True
    await client.execute("DEL", key)


async def test_concurrent_commands_each_get_their_own_reply_in_one_write(client: RespClient) -> None:
    await client.ping()
    keys = [unique(f"n{i}") for i in range(200)]
    writes = client.writes
    counts = await asyncio.gather(*(client.execute("INCRBY", k, i * 7 + 1) for i, k in enumerate(keys)))
    assert counts == [i * 7 + 1 for i in range(200)]
    assert client.writes == writes + 1  # the 200 commands of one loop iteration left together
    values = await asyncio.gather(*(client.execute("GET", k) for k in reversed(keys)))
    assert values == [str(i * 7 + 1).encode() for i in reversed(range(200))]
    assert client.writes == writes + 2
    await client.execute("DEL", *keys)


async def test_error_replies_inside_a_pipeline_stay_with_their_command(client: RespClient) -> None:
    text, number = unique("text"), unique("number")
    outcomes = await asyncio.gather(
        client.execute("SET", text, "abc"),
        client.execute("INCR", text),
        client.execute("INCR", number),
        client.execute("NOSUCHCOMMAND", 1),
        client.execute("EVAL", "return redis.error_reply('READONLY pretend replica')", 0),
        client.execute("EVAL", "return {1, redis.error_reply('inner')}", 0),
        client.execute("INCR", number),
        return_exceptions=True,
    )
    assert outcomes[0] == b"OK"
    assert isinstance(outcomes[1], ResponseError) and "not an integer" in str(outcomes[1])
    assert outcomes[2] == 1
    assert type(outcomes[3]) is ResponseError and "unknown command" in str(outcomes[3])
    assert isinstance(outcomes[4], NotServingError)
    assert outcomes[5][0] == 1 and isinstance(outcomes[5][1], ResponseError)  # nested: a value
    assert outcomes[6] == 2
    assert await client.execute("GET", text) == b"abc"
    await client.execute("DEL", text, number)


async def test_a_cancelled_caller_does_not_shift_the_replies(client: RespClient) -> None:
    await client.ping()
    tasks = [asyncio.create_task(client.execute("ECHO", word)) for word in ("a", "b", "c")]
    await asyncio.sleep(0)  # all three queued, written on the next iteration
    tasks[1].cancel()
    assert await tasks[0] == b"a"
    assert await tasks[2] == b"c"
    assert tasks[1].cancelled()
    assert await client.execute("ECHO", "d") == b"d"


async def test_noscript_falls_back_to_the_source_once(client: RespClient) -> None:
    script = Script(f"-- {uuid.uuid4().hex}\nreturn ARGV[1] .. KEYS[1]")
    call = script.call(["k"], [SLOT])
    names = sent_commands(client)
    assert await client.run(call, ["x"]) == b"xk"
    assert names == [b"EVALSHA", b"EVAL"]
    assert await client.run(call, ["y"]) == b"yk"
    assert await client.evalsha(script, ["k2"], ["z"]) == b"zk2"
    assert names == [b"EVALSHA", b"EVAL", b"EVALSHA", b"EVALSHA"]
    missing = Script(f"return '{uuid.uuid4().hex}'")
    with pytest.raises(NoScriptError):
        await client.execute("EVALSHA", missing.sha, 0)
    assert await client.script_load(missing.source) == missing.sha


async def test_a_command_past_the_timeout_drops_the_connection(redis_url: str) -> None:
    client = RespClient.from_url(redis_url, timeout_s=0.2)
    await client.ping()
    blocked = await asyncio.gather(
        client.execute("BLPOP", unique("never"), 1), client.execute("PING"), return_exceptions=True
    )
    assert all(isinstance(o, ConnectionFailed) and "within 0.2 s" in str(o) for o in blocked), blocked
    assert not client.connected
    # On the old connection the BLPOP's late nil would be read as this reply.
    assert await client.execute("ECHO", "after") == b"after"
    await client.aclose()


async def test_a_server_that_closed_a_quiet_connection_costs_no_failure(client: RespClient, redis_url: str) -> None:
    other = redis.Redis.from_url(redis_url)  # blocking: the loop reads nothing meanwhile, as under load
    for _ in range(3):
        own_id = await client.execute("CLIENT", "ID")
        assert other.client_kill_filter(_id=own_id) == 1
        time.sleep(0.05)  # the end of file is in the socket, unread
        assert await asyncio.gather(*(client.execute("ECHO", i) for i in range(8))) == [
            str(i).encode() for i in range(8)
        ]
        assert await client.execute("CLIENT", "ID") != own_id
    other.close()


async def test_an_unreachable_server_fails_fast() -> None:
    client = RespClient("127.0.0.1", 1)
    outcomes = await asyncio.gather(client.ping(), client.execute("GET", "k"), return_exceptions=True)
    assert all(isinstance(o, ConnectionFailed) and "127.0.0.1:1" in str(o) for o in outcomes), outcomes
    await client.aclose()


async def test_close_fails_what_waits_and_a_later_command_reconnects(client: RespClient) -> None:
    await client.ping()
    waiting = asyncio.ensure_future(client.execute("BLPOP", unique("never"), 1))
    await asyncio.sleep(0.05)
    await client.aclose()
    with pytest.raises(ConnectionFailed, match="closed"):
        await waiting
    assert await client.ping()


# -- a fake server: what was written is never resent ------------------------------------------


async def test_a_written_command_whose_reply_is_lost_is_not_resent() -> None:
    import hiredis

    received: list[tuple[int, list[bytes]]] = []
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number, parser = connections, hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                received.append((number, command))
                if number == 1:  # the first connection dies with the command unanswered
                    writer.close()
                    return
                writer.write(b"+OK\r\n")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient("127.0.0.1", port)
    with pytest.raises(ConnectionFailed, match="lost"):
        await client.execute("INCR", "counter")
    assert await client.execute("PING") == b"OK"
    assert received == [(1, [b"INCR", b"counter"]), (2, [b"PING"])]
    await client.aclose()
    server.close()
    await server.wait_closed()


# -- throwaway servers: restarts, AUTH and SELECT, TLS ----------------------------------------


async def test_the_first_commands_after_a_restart_succeed() -> None:
    with RestartableRedis() as server:
        client = build_client(server.url)
        script = Script(f"-- {uuid.uuid4().hex}\nreturn tonumber(ARGV[1]) + 1")
        call = script.call([], [SLOT])
        assert await client.run(call, [1]) == 2
        server.stop()
        server.start()  # blocks the loop: the old connection's end of file is not read yet
        outcomes = await asyncio.gather(*(client.run(call, [i]) for i in range(32)), return_exceptions=True)
        assert outcomes == [i + 1 for i in range(32)]  # a new connection; NOSCRIPT answered with the source
        server.stop()
        with pytest.raises(ConnectionFailed, match="cannot connect"):
            await client.ping()
        server.start()
        assert await client.ping()
        await client.aclose()


async def test_auth_with_a_password_or_a_user_and_select() -> None:
    server = ThrowawayRedis("--requirepass", "s3cret")
    server.start()
    try:
        base = f"127.0.0.1:{server.port}"
        key = unique("db3")
        client = build_client(f"redis://:s3cret@{base}/3")
        assert await client.execute("SET", key, "here") == b"OK"
        assert await client.execute("ACL", "SETUSER", "alice", "on", ">w0nder", "~*", "&*", "+@all") == b"OK"
        await client.aclose()
        db0 = build_client(f"redis://default:s3cret@{base}/0")
        assert await db0.execute("GET", key) is None
        alice = build_client(f"redis://alice:w0nder@{base}/3")
        assert await alice.execute("GET", key) == b"here"
        for c in (db0, alice):
            await c.aclose()
        wrong = build_client(f"redis://alice:nope@{base}/3")
        with pytest.raises(ConnectionFailed, match="refused AUTH/SELECT: WRONGPASS"):
            await wrong.ping()
        anonymous = build_client(f"redis://{base}/0")
        with pytest.raises(NotServingError, match="NOAUTH"):
            await anonymous.ping()
        for c in (wrong, anonymous):
            await c.aclose()
    finally:
        server.stop()


async def test_tls(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: the TLS test makes its own certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
    subprocess.run(
        [openssl, *request, "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server = ThrowawayRedis()
    server.extra_args = ("--port", "0", "--tls-port", str(server.port), "--tls-cert-file", str(cert))
    server.extra_args += ("--tls-key-file", str(key), "--tls-auth-clients", "no")
    server.start()
    try:
        insecure = build_client(f"rediss://localhost:{server.port}/0?ssl_cert_reqs=none")
        assert await insecure.execute("ECHO", "over tls") == b"over tls"
        trusted = RespClient("localhost", server.port, ssl_context=ssl.create_default_context(cafile=str(cert)))
        assert await asyncio.gather(*(trusted.execute("ECHO", i) for i in range(20))) == [
            str(i).encode() for i in range(20)
        ]
        verified = build_client(f"rediss://localhost:{server.port}/0")
        with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await verified.ping()
        for c in (insecure, trusted, verified):
            await c.aclose()
    finally:
        server.stop()
