"""What only the Redis stores do: one round trip per operation, a shared limit, an unreachable
server (fail closed or fall back, as chosen), passwords kept out of sight, and the `Selector`
driving them, sync and async."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.crc import key_slot

from tests.stores.conftest import free_port, start_redis
from tiersel import Requirements, Selector
from tiersel.clock import FakeClock
from tiersel.signals import Observation, Outcome, SignalConfig, SignalKey
from tiersel.stores import (
    BudgetConflict,
    LedgerFallback,
    SignalFallback,
    StoreMisconfigured,
    StoreUnavailable,
    close_store,
    open_async_ledger,
    open_async_signal_store,
    open_ledger,
    open_signal_store,
    parse_store_url,
)
from tiersel.stores.redis_ledger import RedisLedger
from tiersel.virtual_time import run_virtual

KEY = SignalKey("fireworks", "kimi-k3", "standard")
BODY = {
    "model": "accounts/fireworks/models/kimi-k3",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 100,
}
CANARY = "s3cret-canary-pw"


def dead_url(**query: str) -> str:
    """A Redis URL on a loopback port nobody listens on, with a password to keep hidden."""
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"redis://:{CANARY}@127.0.0.1:{free_port()}/0" + (f"?{q}" if q else "")


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name: int(v["calls"]) for name, v in stats.items()}


def test_each_budget_operation_is_one_round_trip(tmp_path: Path, prefix: str) -> None:
    # A server of its own: its command counts must see this test's commands alone (the suite
    # runs tests in parallel).
    server, redis_url = start_redis(tmp_path)
    try:
        _one_round_trip_each(redis_url, prefix)
    finally:
        server.terminate()
        server.wait(10)


def _one_round_trip_each(redis_url: str, prefix: str) -> None:
    ledger = open_ledger(f"{redis_url}?prefix={prefix}", limit_usd=1.0)
    assert isinstance(ledger, RedisLedger)
    ledger.state(0.0)  # loads the scripts once
    ledger.reserve("warm", 0.1, 0.0)
    ledger.settle("warm", 0.1, 0.0)
    ledger.release("warm", 0.0)
    sent: list[tuple[Any, ...]] = []
    execute = ledger.client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(args)
        return execute(*args, **kwargs)

    ledger.client.execute_command = counting  # type: ignore[method-assign]
    probe = redis.Redis.from_url(redis_url)
    before = command_calls(probe)["cmdstat_evalsha"]
    assert ledger.reserve("a", 0.2, 0.0) is not None
    ledger.settle("a", 0.1, 0.0)
    ledger.release("b", 0.0)
    ledger.state(0.0)
    assert [args[0] for args in sent] == ["EVALSHA"] * 4
    assert command_calls(probe)["cmdstat_evalsha"] - before == 4
    probe.close()
    ledger.close()


def test_a_budget_opened_with_another_limit_is_refused(redis_url: str, prefix: str) -> None:
    url = f"{redis_url}?prefix={prefix}&budget=job-42"
    first = open_ledger(url, limit_usd=10.0)
    first.reserve("a", 1.0, 0.0)
    second = open_ledger(url, limit_usd=20.0)
    with pytest.raises(BudgetConflict, match=r"'job-42'.*\$10\.000000.*\$20\.000000"):
        second.reserve("b", 1.0, 0.0)
    # Nothing changed by the refused operation.
    assert first.state(0.0).reserved_usd == pytest.approx(1.0)


def test_one_budgets_keys_share_a_cluster_slot(redis_url: str, prefix: str) -> None:
    ledger = open_ledger(f"{redis_url}?prefix={prefix}&budget=x", limit_usd=1.0)
    assert isinstance(ledger, RedisLedger)
    assert len({key_slot(k) for k in ledger._core.keys}) == 1
    store = open_signal_store(f"{redis_url}?prefix={prefix}")
    store.record(KEY, Observation(Outcome.shed), 0.0)
    client = redis.Redis.from_url(redis_url)
    keys = client.keys(f"{prefix}:signals:*")
    assert len(keys) == 2 and len({key_slot(k) for k in keys}) == 1
    # Idle signal keys go away on their own.
    assert all(client.pttl(k) > 0 for k in keys)
    client.close()


# -- an unreachable server ----------------------------------------------------------------------


def test_an_unreachable_budget_fails_closed_and_no_call_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[httpx.Request] = []
    ledger = open_ledger(dead_url(), limit_usd=5.0)
    sel = Selector(transport=lambda r: sent.append(r) or httpx.Response(200), ledger=ledger)
    with pytest.raises(StoreUnavailable) as info:
        sel.send(BODY, requirements=Requirements(deadline_s=30))
    message = str(info.value)
    assert sent == []
    assert "budget store at redis://:***@127.0.0.1" in message and "no call is sent" in message
    assert "fail_closed" in message
    for text in (message, repr(ledger), repr(sel), caplog.text):
        assert CANARY not in text


def test_an_unreachable_async_budget_fails_closed_too() -> None:
    async def go() -> None:
        sent: list[httpx.Request] = []

        async def transport(request: httpx.Request) -> httpx.Response:
            sent.append(request)
            return httpx.Response(200)

        ledger = open_async_ledger(dead_url(), limit_usd=5.0)
        sel = Selector(async_transport=transport, ledger=ledger)
        with pytest.raises(StoreUnavailable, match="no call is sent"):
            await sel.asend(BODY, requirements=Requirements(deadline_s=30))
        assert sent == []

    asyncio.run(go())


class FakeServer:
    """A TCP server on loopback that is no working Redis: it answers every command it reads
    with ``answer`` (None: never answers, as a hung server), counting what it was sent."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.commands = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"redis://:{CANARY}@127.0.0.1:{self.sock.getsockname()[1]}/0"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self.commands += data.count(b"*")  # about one per command sent (RESP arrays)
                if self.answer is not None:
                    conn.sendall(self.answer)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_a_hung_budget_server_is_asked_once_and_then_not_for_a_while() -> None:
    # A server that accepts and never answers: a read times out once (no retry of a timeout:
    # it took 4 tries of every operation, 16.6 s a call, before), and the next calls are
    # refused without asking it again for a few seconds: one stalled call, not every one.
    hung = FakeServer(None)
    try:
        sent: list[httpx.Request] = []
        ledger = open_ledger(hung.url + "?socket_timeout=0.3", limit_usd=5.0)
        sel = Selector(transport=lambda r: sent.append(r) or httpx.Response(200), ledger=ledger)
        with pytest.raises(StoreUnavailable, match="no call is sent"):
            sel.send(BODY, requirements=Requirements(deadline_s=30))
        asked = hung.commands
        assert 1 <= asked <= 2  # the script (and the client's greeting, if it sends one)
        for _ in range(3):
            with pytest.raises(StoreUnavailable, match="TimeoutError"):
                sel.send(BODY, requirements=Requirements(deadline_s=30))
        assert hung.commands == asked and sent == []
    finally:
        hung.close()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "does not answer as Redis does"),
        (b"-WRONGPASS invalid username-password pair or user is disabled.\r\n", "credentials"),
    ],
    ids=["not-redis", "wrong-password"],
)
@pytest.mark.parametrize("kind", ["ledger", "signals"])
def test_a_url_that_cannot_work_is_misconfigured_not_an_outage(
    answer: bytes, problem: str, kind: str
) -> None:
    # Waiting will not mend a wrong password or a URL at some other server: never taken for an
    # outage (where signals fall back to memory and a fail_open budget stops checking).
    fake = FakeServer(answer)
    try:
        if kind == "ledger":
            store: Any = open_ledger(
                fake.url, limit_usd=1.0, on_unavailable=LedgerFallback.fail_open
            )
            with pytest.raises(StoreMisconfigured, match=problem) as info:
                store.state(0.0)
        else:
            store = open_signal_store(fake.url)
            with pytest.raises(StoreMisconfigured, match=problem) as info:
                store.stats(KEY, 0.0)
        assert "127.0.0.1" in str(info.value) and CANARY not in str(info.value)
    finally:
        fake.close()


def test_a_budget_may_choose_to_fail_open(caplog: pytest.LogCaptureFixture) -> None:
    ledger = open_ledger(dead_url(), limit_usd=5.0, on_unavailable=LedgerFallback.fail_open)
    with caplog.at_level(logging.WARNING, logger="tiersel.stores"):
        assert ledger.reserve("a", 1.0, 0.0) is not None
        ledger.settle("a", 0.5, 0.0)
        ledger.state(0.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fail_open" in warnings[0].getMessage()
    assert CANARY not in caplog.text


def test_signals_fall_back_to_memory_and_say_so_once(caplog: pytest.LogCaptureFixture) -> None:
    store = open_signal_store(dead_url())
    with caplog.at_level(logging.WARNING, logger="tiersel.stores"):
        for i in range(3):
            stats = store.record(KEY, Observation(Outcome.shed), float(i) * 10)
        assert stats.shed == 3 and store.stats(KEY, 30.0).shed == 3
        assert store.claim_probe(KEY, 30.0, 1.0) is True
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "unreachable" in warnings[0].getMessage()
    assert "memory" in warnings[0].getMessage()
    assert CANARY not in caplog.text


def test_signals_may_choose_to_fail_closed() -> None:
    store = open_signal_store(dead_url(), on_unavailable=SignalFallback.fail_closed)
    with pytest.raises(StoreUnavailable, match=r"signals store at redis://:\*\*\*@"):
        store.stats(KEY, 0.0)


def test_async_signals_fall_back_to_memory_too() -> None:
    async def go() -> None:
        store = open_async_signal_store(dead_url())
        await store.record(KEY, Observation(Outcome.shed), 0.0)
        assert (await store.stats(KEY, 0.0)).shed == 1

    asyncio.run(go())


def test_signals_go_back_to_redis_once_it_answers(tmp_path: Path) -> None:
    proc, url = start_redis(tmp_path)
    port = url.rsplit(":", 1)[1].split("/")[0]
    store = open_signal_store(url)
    store.record(KEY, Observation(Outcome.shed), 0.0)
    proc.terminate()
    proc.wait(10)
    # Away: kept locally (the shared count is not visible here any more).
    assert store.record(KEY, Observation(Outcome.error), 1.0).n == 1
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    back = subprocess.Popen(
        [binary, "--port", port, "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis.from_url(url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        # Within retry_s (5 s of the caller's clock) it stays local; after that, Redis again.
        assert store.stats(KEY, 2.0).n == 1
        store.record(KEY, Observation(Outcome.ok), 7.0)
        assert client.exists(f"tiersel:signals:{{{KEY.endpoint}|{KEY.model}|{KEY.tier}}}:window")
        client.close()
    finally:
        back.terminate()
        back.wait(10)


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://localhost", "unknown scheme 'http'"),
        ("memory://somewhere", "memory:// takes no host"),
        ("redis://h:1/0?reservation_ttl_s=-3", "reservation_ttl_s must be a number"),
        ("redis://h:1/0?reservation_ttl_s=soon", "reservation_ttl_s must be a number"),
        ("redis://h:1/0?budget=a&budget=b", "budget is given twice"),
        ("redis://h:1/0?prefix=", "prefix must not be empty"),
        ("redis://h:1/0?on_expiry=forget", "on_expiry must be release or charge"),
        ("redis://h:1/0?clock=local", "clock must be server or caller, got 'local'"),
        ("memory://?clock=server", "memory:// runs on its callers' clock"),
        ("", "non-empty string"),
        ("redis://h:notaport/0", "the port 'notaport' is not a number from 0 to 65535"),
        ("redis://h:70000/0", "the port '70000' is not a number from 0 to 65535"),
        ("redis://[::1]:x/0", "the port 'x' is not a number from 0 to 65535"),
        ("redis://h:1/abc", "the database 'abc' is not a number"),
        ("redis://h:1/-1", "the database '-1' is not a number"),
        ("redis://h:1/0/1", "the database '0/1' is not a number"),
        ("redis://h:1?db=x", "the database 'x' is not a number"),
        ("redis://h:1/0?reservation_ttl=60", "unknown setting 'reservation_ttl' \\(did you mean"),
        ("redis://h:1/0?sockettimeout=1", "unknown setting 'sockettimeout' \\(did you mean"),
        ("redis://h:1/0?retry=3", "unknown setting 'retry'"),
        ("redis://h:1/0?socket_timeout=soon", "invalid value for 'socket_timeout'"),
        ("redis://h:1/0?max_connections=many", "invalid value for 'max_connections'"),
        ("unix:///tmp/r.sock?db=two", "the database 'two' is not a number"),
        ("redis://[::1/0", "not a URL"),
        # Quoted as typed, not rewritten (it said 'redis:///127...' and '://127...'):
        ("redis:/127.0.0.1:6395/0", "'redis:/127.0.0.1:6395/0': the database '127.0.0.1:63"),
        ("127.0.0.1:6395", "'127.0.0.1:6395': unknown scheme ''"),
    ],
)
def test_bad_urls_name_the_url_and_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_store_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:1/7",
        "redis://h/",
        "redis://h",
        "rediss://user:pw@h:6380/15?ssl_cert_reqs=none",
        "redis://h:1/0?socket_timeout=0.5&max_connections=8&client_name=w1&protocol=3",
        "unix:///tmp/r.sock?db=3",
    ],
)
def test_good_urls_are_taken(url: str) -> None:
    where = parse_store_url(url)
    assert where.backend == "redis" and where.redis_url is not None
    redis.connection.parse_url(where.redis_url)  # what redis-py is given, it reads


def test_the_clock_setting_is_read_from_the_url() -> None:
    assert parse_store_url("redis://h:1/0").clock == "server"
    assert parse_store_url("redis://h:1/0?clock=caller").clock == "caller"
    assert parse_store_url("memory://?clock=caller").backend == "memory"


def test_a_unix_socket_url_keeps_its_slashes() -> None:
    where = parse_store_url("unix:///tmp/r.sock?db=3&budget=b")
    assert where.redis_url == "unix:///tmp/r.sock?db=3" and where.budget == "b"
    assert redis.connection.parse_url(where.redis_url)["path"] == "/tmp/r.sock"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://user:{CANARY}@h:notaport/0",
        f"redis://:{CANARY}@h:1/abc",
        f"redis://h:1/0?password={CANARY}&reservation_ttl_s=x",
        f"redis://h:1/0?ssl_password={CANARY}&colour=red",
        # Read from a file with its newline (urlsplit drops it; the URL as typed keeps it):
        f"redis://:{CANARY}\n@h:1/0?colour=red",
        f"redis://h:1/0?Password={CANARY}&colour=red",
        f"redis://:{CANARY}/b64==@h:1/0?colour=red",
        # helper-30: a password holding '?' or '#', one with no user before it, a setting's
        # name percent-encoded, a scheme with one slash.
        f"redis://:ab?{CANARY}@h:1/0",
        f"redis://:ab#{CANARY}@h:1/0",
        f"redis://{CANARY}@h:1/0?colour=red",
        f"redis://h:1/0?pass%77ord={CANARY}&colour=red",
        f"redis:/u:{CANARY}@h:1/0",
        # helper-32: '?' then '/', '@' then '?', a password holding '&', misspelt names.
        f"redis://:ab?cd/{CANARY}@h:1/0",
        f"redis://:ab@cd?{CANARY}@h:1/0",
        f"redis://h:1/0?password=ab&{CANARY}",
        f"redis://h:1/0?pasword={CANARY}",
        f"redis://h:1/0?passwd={CANARY}",
        f"redis://h:1/0?password ={CANARY}",
        f"redis://h:1/0?pass+word={CANARY}",
    ],
)
def test_a_password_never_shows_in_the_errors_of_malformed_urls(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_store_url(url)
    assert CANARY not in str(info.value) and "***" in str(info.value), info.value


@pytest.mark.parametrize(
    ("url", "public"),
    [
        (f"redis://:ab@cd#{CANARY}@h:1/0", "redis://***"),  # accepted before, fragment shown
        (f"redis://h:1/0?password=ab#{CANARY}", "redis://h:1/0?password=***"),
        (
            f"redis://h:1/0?socket_timeout=5&password={CANARY}",
            "redis://h:1/0?socket_timeout=5&password=***",
        ),
    ],
)
def test_a_password_never_shows_in_a_urls_public_form(url: str, public: str) -> None:
    try:
        shown = parse_store_url(url).public
    except ValueError as exc:
        shown = str(exc)
    assert CANARY not in shown and public in shown, shown


def test_an_at_sign_after_a_question_mark_is_refused_asking_to_percent_encode_it() -> None:
    # Where the user part ends cannot be told (a password holding '?', or a setting an '@').
    for url in ("redis://:ab?cd@h:1/0", "redis://h:1/0?client_name=me@corp"):
        with pytest.raises(ValueError, match=r"'redis://\*\*\*': an '@' after its '\?' or '#'"):
            parse_store_url(url)
    assert parse_store_url("redis://h:1/0?client_name=me%40corp").public.endswith("me%40corp")


@pytest.mark.parametrize("kind", ["ledger", "async-ledger", "signals", "async-signals"])
def test_a_database_the_server_does_not_have_is_named(redis_url: str, kind: str) -> None:
    url = redis_url.rsplit("/", 1)[0].replace("redis://", f"redis://:{CANARY}@") + "/99999"
    masked = url.replace(CANARY, "***")
    expected = f"store URL {masked!r}: the server has no database 99999 (DB index is out of range)"
    key = SignalKey("fireworks", "kimi-k3", "standard")
    with pytest.raises(StoreMisconfigured) as info:
        if kind == "ledger":
            open_ledger(url, limit_usd=1.0).state(0.0)
        elif kind == "signals":
            open_signal_store(url).stats(key, 0.0)
        else:

            async def go() -> None:
                if kind == "async-ledger":
                    await open_async_ledger(url, limit_usd=1.0).state(0.0)
                else:
                    await open_async_signal_store(url).stats(key, 0.0)

            asyncio.run(go())
    assert str(info.value) == expected
    assert isinstance(info.value, ValueError) and CANARY not in str(info.value)


def test_a_password_never_shows_in_url_errors() -> None:
    with pytest.raises(ValueError) as info:
        parse_store_url(f"redis://user:{CANARY}@h:1/0?reservation_ttl_s=x")
    assert CANARY not in str(info.value) and "user:***@h:1" in str(info.value)


def test_our_settings_are_taken_out_and_the_rest_goes_to_redis_py() -> None:
    where = parse_store_url("redis://h:6380/2?budget=b1&socket_timeout=0.5&prefix=p")
    assert (where.backend, where.budget, where.prefix) == ("redis", "b1", "p")
    assert where.redis_url == "redis://h:6380/2?socket_timeout=0.5"
    assert parse_store_url("memory://").backend == "memory"


# -- the Selector driving Redis stores ------------------------------------------------------------


def completion(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    assert "service_tier" not in body
    usage = {"prompt_tokens": 50, "completion_tokens": 20}
    return httpx.Response(200, json={"id": "x", "choices": [], "usage": usage})


def test_asend_awaits_async_redis_stores(redis_url: str, prefix: str) -> None:
    url = f"{redis_url}?prefix={prefix}"

    async def go() -> None:
        async def transport(request: httpx.Request) -> httpx.Response:
            return completion(request)

        ledger = open_async_ledger(url, limit_usd=1.0)
        signals = open_async_signal_store(url)
        sel = Selector(signals=signals, ledger=ledger, async_transport=transport)
        results = await asyncio.gather(
            *(sel.asend(BODY, requirements=Requirements(tiers=["standard"])) for _ in range(10))
        )
        assert all(r.ok for r in results)
        state = await ledger.state(0.0)
        assert state.reserved_usd == 0.0
        assert state.spent_usd == pytest.approx(sum(r.cost_usd for r in results), abs=1e-8)
        with pytest.raises(TypeError, match="async; use asend"):
            sel.send(BODY)
        await ledger.aclose()  # type: ignore[attr-defined]
        await signals.aclose()  # type: ignore[attr-defined]

    asyncio.run(go())
    # Another process (a sync store here) sees the same budget and signals.
    sync_ledger = open_ledger(url, limit_usd=1.0)
    assert sync_ledger.state(0.0).spent_usd > 0
    assert open_signal_store(url).stats(KEY, time.monotonic()).ok == 10


def test_send_drives_sync_redis_stores(redis_url: str, prefix: str) -> None:
    url = f"{redis_url}?prefix={prefix}"
    ledger = open_ledger(url, limit_usd=1.0)
    sel = Selector(signals=open_signal_store(url), ledger=ledger, transport=completion)
    result = sel.send(BODY, requirements=Requirements(tiers=["standard"]))
    assert result.ok
    assert ledger.state(0.0).spent_usd == pytest.approx(result.cost_usd, abs=1e-9)
    assert sel.decide(sel.engine.call_for(BODY, sel_dialect())[0]).tier is not None


def sel_dialect() -> Any:
    from tiersel.dialects import dialect_for_path

    return dialect_for_path("/chat/completions")


# -- round trips shared by concurrent tasks -------------------------------------------------------


def test_a_server_that_lost_its_scripts_gets_them_again(redis_url: str, prefix: str) -> None:
    url = f"{redis_url}?prefix={prefix}"
    sync_ledger = open_ledger(url, limit_usd=1.0)
    sync_ledger.reserve("a", 0.1, 0.0)

    async def go() -> None:
        ledger = open_async_ledger(url, limit_usd=1.0)
        await ledger.reserve("b", 0.1, 0.0)
        client = redis.Redis.from_url(redis_url)
        client.script_flush()  # as after a restart or a failover
        client.close()
        states = await asyncio.gather(*(ledger.reserve(f"c{i}", 0.1, 0.0) for i in range(5)))
        assert [s is not None for s in states] == [True] * 5
        await ledger.aclose()  # type: ignore[attr-defined]

    asyncio.run(go())
    assert sync_ledger.reserve("d", 0.1, 0.0).reserved_usd == pytest.approx(0.8)


def test_one_calls_script_error_reaches_only_that_call(redis_url: str, prefix: str) -> None:
    """Two tasks' scripts share one round trip; the one that fails fails alone."""
    other = SignalKey("fireworks", "kimi-k3", "priority")
    client = redis.Redis.from_url(redis_url)
    client.set(f"{prefix}:signals:{{fireworks|kimi-k3|priority}}:window", "not a hash")
    client.close()

    async def go() -> None:
        store = open_async_signal_store(f"{redis_url}?prefix={prefix}")
        results = await asyncio.gather(
            store.record(KEY, Observation(Outcome.ok), 0.0),
            store.record(other, Observation(Outcome.ok), 0.0),
            return_exceptions=True,
        )
        assert not isinstance(results[0], BaseException) and results[0].ok == 1
        assert isinstance(results[1], redis.exceptions.ResponseError)
        assert "WRONGTYPE" in str(results[1])
        await store.aclose()  # type: ignore[attr-defined]

    asyncio.run(go())


def test_by_default_a_redis_store_runs_on_the_servers_clock(redis_url: str, prefix: str) -> None:
    # The callers' `now` is not used: a clock far ahead expires nothing the server's has not.
    url = f"{redis_url}?prefix={prefix}"
    ledger = open_ledger(url, limit_usd=1.0)
    signals = open_signal_store(url, SignalConfig(window_s=0.8, buckets=4))
    try:
        ledger.reserve("a", 0.8, 0.0, ttl_s=0.5)
        assert ledger.state(1e9).reserved_usd == pytest.approx(0.8)
        signals.record(KEY, Observation(Outcome.shed), 0.0)
        assert signals.stats(KEY, 1e9).shed == 1
    finally:
        close_store(ledger)
        close_store(signals)
    # With clock=caller the same moves expire both (the contract tests run this way).
    url += "&clock=caller"
    ledger = open_ledger(url, limit_usd=1.0, name="caller")
    signals = open_signal_store(url, SignalConfig(window_s=0.8, buckets=4))
    try:
        ledger.reserve("a", 0.8, 0.0, ttl_s=0.5)
        assert ledger.state(1.0).reserved_usd == 0.0
        signals.record(
            SignalKey("fireworks", "kimi-k3", "priority"), Observation(Outcome.shed), 0.0
        )
        assert signals.stats(SignalKey("fireworks", "kimi-k3", "priority"), 5.0).shed == 0
    finally:
        close_store(ledger)
        close_store(signals)


# Blocks the server for 150 ms of real time (a script runs alone): a slow reply, on demand.
_BUSY_150_MS = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat
  t = redis.call('TIME')
until t[1] * 1000000 + t[2] - start > 150000
return 1
"""


def test_a_slow_reply_on_a_virtual_clock_is_waited_for_in_real_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # tiersel batch --sim with a Redis store (helper-31, d3): every task waits on the store's
    # reply, its socket timeout is the loop's only timer, and the virtual clock jumped to it
    # after 2 ms: "unreachable (TimeoutError)" whenever the server took longer than that.
    proc, url = start_redis(tmp_path)
    blocker = redis.Redis.from_url(url)
    clock = FakeClock()
    try:

        async def go() -> float:
            store = open_async_signal_store(url)
            await store.record(KEY, Observation(Outcome.ok), clock.now())  # connected
            busy = threading.Thread(target=blocker.eval, args=(_BUSY_150_MS, 0))
            busy.start()
            time.sleep(0.03)  # (real time: the script is running)
            before = clock.now()
            stats = await store.record(KEY, Observation(Outcome.shed), clock.now())
            busy.join()
            assert stats.ok == 1 and stats.shed == 1
            await store.aclose()  # type: ignore[attr-defined]
            return clock.now() - before

        with caplog.at_level(logging.WARNING, logger="tiersel.stores"):
            took = run_virtual(go(), clock)
    finally:
        blocker.close()
        proc.terminate()
        proc.wait(10)
    assert not caplog.records, caplog.text  # no fallback to memory
    assert took < 1.0  # the clock ran at most at real speed while the reply came


def test_a_charge_forgets_any_number_of_old_settled_ids_at_once(
    redis_url: str, prefix: str
) -> None:
    # helper-34: the settle script deleted the forgotten ids' charges with one unpack(), which
    # Lua refuses past 8000 values: after a quiet week following a big job, every charge failed
    # halfway (its reservation dropped, its id marked settled, its money never spent).
    client = redis.Redis.from_url(redis_url)
    ledger = RedisLedger(
        client, limit_usd=100.0, name="b", prefix=prefix, settled_keep_s=60, clock="caller"
    )
    base = f"{prefix}:budget:{{b}}"
    old = {f"job:{i}#1": 0 for i in range(8001)}  # settled at 0 ms, a job's 8001 lines
    client.zadd(f"{base}:settled", old)
    client.hset(f"{base}:charged", mapping=dict.fromkeys(old, 1000))
    assert ledger.reserve("next#1", 1.0, 3600.0) is not None
    state = ledger.settle("next#1", 0.5, 3600.0)  # an hour later: all 8001 are forgotten
    assert (state.spent_usd, state.reserved_usd) == (0.5, 0.0)
    assert client.zcard(f"{base}:settled") == client.hlen(f"{base}:charged") == 1
    client.close()
