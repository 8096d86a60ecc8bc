"""``streamrec-rollout`` against a real redis-server and a model store on disk (no workers: their
reports are written to Redis as a worker writes them), and the report's statistics."""

from __future__ import annotations

import math
import time

import orjson
import pytest
import redis

from streamer import report
from streamer.attribution import Stats
from streamer.rollout import Rollout, RolloutError, canary_split, main, pinned_split, render_status
from streamer.variants import config_key, parse_split, workers_key
from tests.unit.streamer.test_variants import export_versions


# ---- splits ------------------------------------------------------------------------------------
def test_canary_split_takes_the_share_from_production_only():
    base = parse_split("ranker:0.9,control:0.1")
    assert canary_split(base, "v2", 0.1) == (("ranker@v2", 0.1), ("ranker@production", 0.8), ("control", 0.1))
    assert canary_split(parse_split("ranker:1"), "v2", 0.25) == (("ranker@v2", 0.25), ("ranker@production", 0.75))
    for bad_share in (0, 1, 0.95):
        with pytest.raises(RolloutError):
            canary_split(base, "v2", bad_share)
    with pytest.raises(RolloutError, match="no production arm"):
        canary_split(parse_split("control:1"), "v2", 0.1)
    with pytest.raises(RolloutError, match="already an arm"):
        canary_split(parse_split("ranker@v2:0.1,ranker:0.9"), "v2", 0.1)
    assert pinned_split(base, "v2") == (("ranker@v2", 0.9), ("control", 0.1))
    new = canary_split(base, "v2", 0.1)
    assert parse_split(",".join(f"{label}:{w:g}" for label, w in new)) == new  # valid for the workers


# ---- the commands --------------------------------------------------------------------------------
@pytest.fixture()
def store(tmp_path):
    return export_versions(tmp_path / "models")


def fake_worker(r, prefix, name, production, loaded=(), refused=None, age_s=0.0):
    """What ``VersionLoader.report`` writes for one worker."""
    r.hset(
        workers_key(prefix),
        name,
        orjson.dumps(
            {
                "worker": name,
                "ts": time.time() - age_s,
                "production": production,
                "loaded": list(loaded),
                "refused": refused or {},
                "split": "",
                "serving": {},
            }
        ),
    )


def test_canary_rollback_and_promote_write_the_split_state_and_latest(redis_url, store):  # noqa: F811
    r = redis.Redis.from_url(redis_url)
    out: list[str] = []
    ro = Rollout(r, "t1:", store, out=out.append)
    r.set(config_key("t1:"), "ranker:0.9,control:0.1")
    assert ro.canary("v2", 0.1, wait_s=0) == 0
    assert r.get(config_key("t1:")) == b"ranker@v2:0.1,ranker@production:0.8,control:0.1"
    st = ro.state()
    assert (st["status"], st["version"], st["production"], st["base"], st["base_from"]) == (
        "canary",
        "v2",
        "v1",
        "ranker:0.9,control:0.1",
        "override",
    )
    with pytest.raises(RolloutError, match="in progress"):
        ro.canary("v2", 0.1, wait_s=0)
    assert ro.rollback() == 0
    assert r.get(config_key("t1:")) == b"ranker:0.9,control:0.1" and ro.state()["status"] == "rolled_back"
    with pytest.raises(RolloutError, match="nothing to roll back"):
        ro.rollback()
    with pytest.raises(RolloutError, match="no version nope"):
        ro.canary("nope", 0.1, wait_s=0)
    with pytest.raises(RolloutError, match="production already"):
        ro.canary("v1", 0.1, wait_s=0)

    # promote: the split is pinned until every live worker runs v2 as production
    assert ro.canary("v2", 0.1, wait_s=0) == 0
    fake_worker(r, "t1:", "w1", "v1", loaded=["v2"])
    fake_worker(r, "t1:", "gone", "v0", age_s=3600)  # a dead worker's old report does not block
    assert ro.promote(wait_s=0.5) == 1
    assert r.get(config_key("t1:")) == b"ranker@v2:0.9,control:0.1"  # pinned: the ranker band on v2 already
    assert (store / "LATEST").read_text().strip() == "v2" and ro.state()["status"] == "promoting"
    fake_worker(r, "t1:", "w1", "v2")
    assert ro.promote(wait_s=5) == 0
    assert r.get(config_key("t1:")) == b"ranker:0.9,control:0.1"
    assert ro.state()["status"] == "promoted" and ro.state()["previous"] == "v1"
    text = render_status(ro.status())
    assert "rollout: promoted v2" in text and "w1: production v2" in text and "GONE?" in text

    # rollback of the promotion: LATEST back, pinned until the workers run v1
    fake_worker(r, "t1:", "w1", "v1")
    assert ro.rollback(wait_s=5) == 0
    assert (store / "LATEST").read_text().strip() == "v1" and r.get(config_key("t1:")) == b"ranker:0.9,control:0.1"


def test_a_refused_canary_is_rolled_back_by_the_tool(redis_url, store, capsys):  # noqa: F811
    r = redis.Redis.from_url(redis_url)
    ro = Rollout(r, "t2:", store, out=print)
    fake_worker(r, "t2:", "w1", "v1", refused={"v3-corrupt": "checksum mismatch for ranker.onnx"})
    fake_worker(r, "t2:", "w2", "v1")
    assert ro.canary("v3-corrupt", 0.1, wait_s=0.3) == 1
    assert "REFUSED by w1" in capsys.readouterr().out
    assert r.get(config_key("t2:")) is None and ro.state()["status"] == "rolled_back"  # the environment's split again
    r.hset("t2:rollout:refused", "v3-corrupt", "w1: checksum mismatch")
    assert (
        main(
            [
                "--redis-url",
                redis_url,
                "--prefix",
                "t2:",
                "--model-root",
                str(store),
                "canary",
                "v3-corrupt",
                "--wait",
                "0",
            ]
        )
        == 1
    )
    assert "refused by a worker" in capsys.readouterr().err
    assert main(["--redis-url", redis_url, "--prefix", "t2:", "--model-root", str(store), "status"]) == 0
    assert "REFUSED v3-corrupt: w1: checksum mismatch" in capsys.readouterr().out


async def test_decide_promotes_rolls_back_or_waits_on_the_interval(redis_url, store):  # noqa: F811
    import redis.asyncio as aioredis

    from streamer.attribution import write_stats

    r = redis.Redis.from_url(redis_url)
    ro = Rollout(r, "t3:", store, out=lambda _m: None)
    assert ro.canary("v2", 0.5, wait_s=0) == 0
    a = aioredis.from_url(redis_url)

    async def counts(prefix, canary, prod):
        s = Stats()
        for label, (lists, bought) in (("ranker@v2", canary), ("ranker@v1", prod)):
            s.add(label, "lists", lists)
            s.add(label, "lists_purchased", bought)
        await write_stats(a, s, prefix)

    await counts("t3:", (100, 30), (100, 10))
    assert ro.decide(min_lists=1000, level=0.95)[0] == "wait"  # significant, but too few lists
    assert ro.decide(min_lists=50, level=0.95)[0] == "promote"
    await counts("t3:", (2000, 100), (2000, 400))  # now 130/2100 vs 410/2100: clearly worse
    action, why = ro.decide(min_lists=50, level=0.95)
    assert action == "rollback" and "ranker@v2 - ranker@v1" in why
    await a.aclose()


# ---- statistics ----------------------------------------------------------------------------------
def test_z_test_and_levels_match_textbook_values():
    assert report.z_for(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert report.z_for(0.99) == pytest.approx(2.575829, abs=1e-6)
    # pooled two-proportion z-test, computed independently with erfc
    x1, n1, x2, n2 = 120, 1000, 70, 900
    pooled = (x1 + x2) / (n1 + n2)
    z = (x1 / n1 - x2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert report.two_proportion_p(x1, n1, x2, n2) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert report.two_proportion_p(0, 10, 0, 10) == 1.0 and report.two_proportion_p(1, 0, 1, 10) == 1.0
    # a wider level widens the interval; Newcombe example (a) again at 95 %
    base = dict.fromkeys(("lists_clicked", "lists_carted"), 0)
    c95 = report.compare(dict(base, lists=70, lists_purchased=56), dict(base, lists=80, lists_purchased=48), 0.95)[
        "conversion"
    ]
    assert (round(c95["low"], 4), round(c95["high"], 4)) == (0.0524, 0.3339) and c95["significant"]
    c999 = report.compare(dict(base, lists=70, lists_purchased=56), dict(base, lists=80, lists_purchased=48), 0.999)[
        "conversion"
    ]
    assert c999["low"] < 0 < c999["high"] and not c999["significant"]


async def test_report_compares_the_canary_with_production(redis_url, store, capsys):  # noqa: F811
    import redis.asyncio as aioredis

    from streamer.attribution import write_stats

    ro = Rollout(redis.Redis.from_url(redis_url), "t4:", store, out=lambda _m: None)
    assert ro.canary("v2", 0.1, wait_s=0) == 0
    a = aioredis.from_url(redis_url)
    s = Stats()
    for label, lists, bought in (("ranker@v2", 1000, 120), ("ranker@v1", 9000, 630), ("control", 500, 10)):
        s.add(label, "lists", lists)
        s.add(label, "lists_purchased", bought)
    await write_stats(a, s, "t4:")
    await a.aclose()
    assert report.main(["--redis-url", redis_url, "--prefix", "t4:"]) == 0
    out = capsys.readouterr().out
    assert "difference to ranker@v1" in out and "ranker@v2: " in out and "conversion +5.00" in out
    assert "significant, better" in out and "control: " in out
    assert report.main(["--redis-url", redis_url, "--prefix", "t4:", "--json", "--level", "0.99"]) == 0
    d = orjson.loads(capsys.readouterr().out)
    assert d["ranker@v2"]["conversion"]["level"] == 0.99 and d["ranker@v2"]["vs_ranker@v1"]["conversion"]["significant"]
    assert report.main(["--redis-url", redis_url, "--prefix", "t4:", "--baseline", "control", "--json"]) == 0
    assert "vs_control" in orjson.loads(capsys.readouterr().out)["ranker@v2"]
