"""Privacy and security end to end: pseudonymised user ids everywhere the worker writes, no
personal data or secret in its INFO logs or metrics, erase_user honoured, Redis AUTH.

One worker runs against a private redis-server started with ``--requirepass``, with a password in
REDIS_URL, STREAMREC_PSEUDONYMIZE_KEY set and a (unused, PLAINTEXT) SASL password configured, so
that every secret is present for the log check.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import orjson
import pytest

from streamer.ingest import Pseudonymizer
from tests.conftest import wait_until
from tests.integration.helpers import (
    WorkerProcess,
    event,
    produce,
    read_all,
    unique_topics,
)
from tests.integration.test_faults import RedisServer, shared_model_root

pytestmark = pytest.mark.integration

REDIS_PW = "rp-9f3k-Secret-Pw"
PSEUDO_KEY = "pk-77ab-HmacKey-not-to-log"
SASL_PW = "sasl-5c2e-Secret"
QUERY = "confidential lantern query 8813"
RAW = ["alice.raw.7731", "bob.raw.5512", "erase.me.4242"]
SECRETS = [REDIS_PW, PSEUDO_KEY, SASL_PW]


def ev(i: int, user: str, item: str | None, **kw):
    """An event whose id does not embed the user id: the worker copies event ids into the lists
    (the producer's choice, documented in RELIABILITY.md), so they must not carry personal data."""
    return event(i, user, item, event_id=f"priv-ev-{i}", **kw)


def redis_value(r, key: bytes) -> bytes:
    """Every byte a key holds, whatever its type (lists, A/B stats hashes, ...)."""
    kind = r.type(key)
    if kind == b"string":
        return r.get(key) or b""
    if kind == b"hash":
        return b"".join(k + v for k, v in r.hgetall(key).items())
    if kind == b"list":
        return b"".join(r.lrange(key, 0, -1))
    if kind == b"set":
        return b"".join(r.smembers(key))
    if kind == b"zset":
        return b"".join(m for m, _s in r.zrange(key, 0, -1, withscores=True))
    if kind == b"stream":
        return b"".join(k + v for _id, fields in r.xrange(key) for k, v in fields.items())
    return r.dump(key) or b""


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return shared_model_root(tmp_path_factory)


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory):
    rs = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=REDIS_PW).start()
    yield rs
    rs.stop()


def test_pseudonymised_ids_no_personal_data_in_logs_metrics_and_erase(stack, model_root, auth_redis, tmp_path):
    topics = unique_topics(stack, "priv")
    pseudo = Pseudonymizer(PSEUDO_KEY)
    pid = {u: pseudo(u) for u in RAW}
    r = auth_redis.client()
    w = WorkerProcess(
        stack,
        model_root,
        tmp_path / "w",
        app_id="priv",
        topics=topics,
        REDIS_URL=auth_redis.url,
        STREAMREC_PSEUDONYMIZE_KEY=PSEUDO_KEY,
        KAFKA_SASL_PASSWORD=SASL_PW,
    ).start()
    try:
        w.wait_ready()
        evs = []
        for i, u in enumerate(RAW):
            evs += [ev(10 * i, u, "71053", etype="view"), ev(10 * i + 1, u, "85123A", etype="purchase")]
        evs.append(ev(100, RAW[0], None, etype="search", query=QUERY))
        asyncio.run(produce(stack.bootstrap, topics["events"], evs))
        key = topics["prefix"]
        wait_until(lambda: all(r.exists(key + pid[u]) for u in RAW), 60, "pseudonymised lists", on_fail=w.tail)
        assert orjson.loads(r.get(key + pid[RAW[0]]))["user_id"] == pid[RAW[0]]

        # erase_user: the list goes, the state goes (a tombstone in the changelog), and a later
        # event for the same user starts from empty state
        gone = RAW[2]
        asyncio.run(produce(stack.bootstrap, topics["events"], [ev(200, gone, None, etype="erase_user")]))
        wait_until(lambda: not r.exists(key + pid[gone]), 30, "erased user's list deleted", on_fail=w.tail)
        changelog = "priv-user-state-changelog"
        wait_until(
            lambda: (
                [
                    m
                    for m in asyncio.run(read_all(stack.bootstrap, changelog, timeout=5))
                    if m.key == pid[gone].encode()
                ][-1].value
                is None
            ),
            30,
            "tombstone in the changelog",
        )
        asyncio.run(produce(stack.bootstrap, topics["events"], [ev(300, gone, "22633", etype="view")]))
        wait_until(lambda: r.exists(key + pid[gone]), 30, "list after the user came back", on_fail=w.tail)
        from streamer.state import UserState

        def fresh_state():
            msgs = [
                m for m in asyncio.run(read_all(stack.bootstrap, changelog, timeout=5)) if m.key == pid[gone].encode()
            ]
            return msgs[-1].value is not None and UserState.from_bytes(msgs[-1].value).events_applied == 1

        wait_until(fresh_state, 30, "state rebuilt from empty after erase")

        # what the worker wrote: Redis, the recommendations topic, the changelog
        redis_dump = b"".join(k + redis_value(r, k) for k in r.scan_iter("*"))
        recs = asyncio.run(read_all(stack.bootstrap, topics["recs"], timeout=10))
        clog = asyncio.run(read_all(stack.bootstrap, changelog, timeout=10))
        metrics_text = w.metrics()
    finally:
        code = w.stop()
    log_text = w.log.read_text(errors="replace")
    topic_dump = b"".join((m.key or b"") + (m.value or b"") for m in recs + clog)
    assert recs and clog and redis_dump
    for u in RAW:
        assert u.encode() not in redis_dump, f"raw id {u} in Redis"
        assert u.encode() not in topic_dump, f"raw id {u} in recommendations topic or changelog"
        assert u not in log_text, f"raw id {u} in the worker log"
        assert u not in metrics_text and pid[u] not in metrics_text, f"user id {u} in /metrics"
        assert pid[u].encode() in redis_dump  # the pseudonym is what is stored
    for secret in SECRETS:
        assert secret not in log_text, "a secret is in the worker log"
        assert secret not in metrics_text
    assert QUERY not in log_text and QUERY not in metrics_text
    assert "INFO" in log_text and "serving model" in log_text  # the log was written at INFO
    assert code in (0, -15), w.tail()
    print(
        f"\nPRIVACY: {len(RAW)} raw ids, checked Redis ({len(redis_dump)} B), recs+changelog "
        f"({len(recs)}+{len(clog)} msgs), log ({len(log_text)} B), /metrics: no raw id, no secret, no query; "
        f"erase_user: list deleted, tombstone written, state rebuilt from empty"
    )


def test_redis_auth_password_setting_and_wrong_password(stack, model_root, auth_redis, tmp_path):
    """REDIS_PASSWORD with a URL without one works; a wrong password stops the worker at start with
    a message naming the setting (and not the password), instead of retrying for ever."""
    topics = unique_topics(stack, "auth")
    plain_url = f"redis://127.0.0.1:{auth_redis.port}/0"
    w = WorkerProcess(
        stack, model_root, tmp_path / "w", app_id="auth", topics=topics, REDIS_URL=plain_url, REDIS_PASSWORD=REDIS_PW
    ).start()
    r = auth_redis.client()
    try:
        w.wait_ready()
        asyncio.run(produce(stack.bootstrap, topics["events"], [event(1, "auth-user", "71053")]))
        wait_until(
            lambda: r.exists(topics["prefix"] + "auth-user"), 60, "list written with REDIS_PASSWORD", on_fail=w.tail
        )
    finally:
        w.stop()
    assert REDIS_PW not in w.log.read_text()

    wrong = "wrong-pw-31337"
    bad = WorkerProcess(
        stack,
        model_root,
        tmp_path / "bad",
        app_id="auth-bad",
        topics=topics,
        REDIS_URL=f"redis://:{wrong}@127.0.0.1:{auth_redis.port}/0",
    ).start()
    try:
        code = bad.proc.wait(60)
    except subprocess.TimeoutExpired:
        bad.kill()
        raise AssertionError("worker with a wrong Redis password kept running:\n" + bad.tail()) from None
    log = bad.log.read_text()
    assert code == 2 and "REDIS_PASSWORD / REDIS_URL" in log, log[-2000:]
    assert wrong not in log
    nopw = WorkerProcess(
        stack, model_root, tmp_path / "nopw", app_id="auth-nopw", topics=topics, REDIS_URL=plain_url
    ).start()
    t0 = time.monotonic()
    assert nopw.proc.wait(60) == 2 and "REDIS_PASSWORD" in nopw.log.read_text()
    print(
        f"\nREDIS AUTH: REDIS_PASSWORD works; wrong or missing password -> exit 2 naming the setting "
        f"({time.monotonic() - t0:.1f} s), password never logged"
    )
