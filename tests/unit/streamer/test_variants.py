"""The A/B split naming model versions: grammar, stable assignment, two versions in one pipeline,
a refused version falling to production (tiny real ONNX versions, in-memory state)."""

from __future__ import annotations

import math
import shutil

import pytest

from schemas.kafka_settings import SettingsError
from streamer.model import ModelBundle, ModelRefused
from streamer.pipeline import Pipeline
from streamer.state import UserState
from streamer.variants import (
    VariantPoller,
    VersionLoader,
    arm_version,
    format_split,
    named_versions,
    parse_split,
    parse_variants,
    variant_for,
)
from tests.unit.streamer.helpers import DictStore, ev, msg, settings


# ---- grammar ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, split",
    [
        ("ranker:1.0", (("ranker", 1.0),)),
        ("ranker:0.9,control:0.1", (("ranker", 0.9), ("control", 0.1))),
        (
            "ranker@20261201T0300Z-retrain:0.1, ranker@production:0.9",
            (("ranker@20261201T0300Z-retrain", 0.1), ("ranker@production", 0.9)),
        ),
        (
            "ranker@v2.1_b:0.05,ranker@production:0.85,control:0.1",
            (("ranker@v2.1_b", 0.05), ("ranker@production", 0.85), ("control", 0.1)),
        ),
        ("ranker@v2:0,ranker:1", (("ranker@v2", 0.0), ("ranker", 1.0))),
    ],
)
def test_valid_splits_parse(raw, split):
    assert parse_variants("STREAMREC_VARIANTS", raw) == split
    assert parse_split(format_split(split)) == split  # what the rollout tool writes reads back


@pytest.mark.parametrize(
    "raw, words",
    [
        ("ranker:0.5", "sum to 1"),
        ("banana:1", "ranker, ranker@<version>"),
        ("control@v2:1", "ranker, ranker@<version>"),
        ("ranker@:1", "ranker, ranker@<version>"),
        ("ranker@../etc:0.5,ranker:0.5", "ranker, ranker@<version>"),
        ("ranker@v2.tmp-x:0.5,ranker:0.5", "ranker, ranker@<version>"),
        ("ranker@LATEST:0.5,ranker:0.5", "ranker, ranker@<version>"),
        ("ranker@v2:-0.1,ranker:1.1", "weight >= 0"),
        ("ranker@v2:nan,ranker:1", "weight >= 0"),
        ("ranker:x", "is not variant:weight"),
        ("ranker:0.5,ranker@production:0.5", "already in the split"),
        ("ranker@v2:0.5,ranker@v2:0.5", "already in the split"),
        ("", "empty split"),
    ],
)
def test_bad_splits_name_the_setting(raw, words):
    with pytest.raises(SettingsError) as e:
        parse_variants("STREAMREC_VARIANTS", raw)
    assert str(e.value).startswith("STREAMREC_VARIANTS: ") and words in str(e.value) and "\n" not in str(e.value)


def test_settings_use_the_same_grammar():
    from streamer.settings import Settings

    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "REDIS_URL": "redis://127.0.0.1:1/0"}
    assert Settings.from_env(dict(env, STREAMREC_VARIANTS="ranker@v2:0.1,ranker@production:0.9")).variants[0] == (
        "ranker@v2",
        0.1,
    )
    with pytest.raises(SettingsError, match=r"^STREAMREC_VARIANTS: .*already in the split"):
        Settings.from_env(dict(env, STREAMREC_VARIANTS="ranker:0.5,ranker@production:0.5"))


def test_arm_versions():
    assert arm_version("control") is None
    assert arm_version("ranker") == arm_version("ranker@production") == "production"
    assert arm_version("ranker@v2") == "v2"
    assert named_versions(parse_split("ranker@v2:0,ranker@v3:0.1,ranker:0.8,control:0.1")) == {"v2", "v3"}


# ---- assignment ------------------------------------------------------------------------------
def test_assignment_is_stable_proportional_and_a_canary_moves_only_its_band():
    users = [f"user{i}" for i in range(20000)]
    base = parse_split("ranker@production:0.9,control:0.1")
    canary = parse_split("ranker@v2:0.1,ranker@production:0.8,control:0.1")
    before = [variant_for(u, base) for u in users]
    after = [variant_for(u, canary) for u in users]
    assert after == [variant_for(u, canary) for u in users]  # same user, same arm, every time
    n, share = len(users), after.count("ranker@v2") / len(users)
    assert abs(share - 0.1) < 4.5 * math.sqrt(0.1 * 0.9 / n)  # binomial bound
    for b, a in zip(before, after):
        assert a == b or (b == "ranker@production" and a == "ranker@v2")  # control never moves
    grown = [variant_for(u, parse_split("ranker@v2:0.5,ranker@production:0.4,control:0.1")) for u in users]
    assert all(g == "ranker@v2" for a, g in zip(after, grown) if a == "ranker@v2")  # growing keeps the canary's users


# ---- two versions in one pipeline ------------------------------------------------------------
def export_versions(root, catalog_size: int | None = None):
    """v1 (published, 8-d), v2 (unpublished, another vector space: 16-d; the index of the first
    ``catalog_size`` items) and v3-corrupt (v2 with a flipped byte in its ranker: its checksum fails)
    in the model store ``root``: written by the tiny model's generator, without torch."""
    from exporters.registry import set_latest
    from tests.fixtures.make_tiny_model import DIM, WIDE_DIM, build, fixture_feature_weights
    from tests.unit.streamer.conftest import CATALOG

    weights = fixture_feature_weights()
    build(root / "v1", DIM, CATALOG, weights)
    set_latest(root, "v1")
    build(root / "v2", WIDE_DIM, CATALOG[:catalog_size], weights)
    bad = root / "v3-corrupt"
    shutil.copytree(root / "v2", bad)
    data = bytearray((bad / "ranker.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "ranker.onnx").write_bytes(bytes(data))
    return root


def imported_modules(paths) -> set[str]:
    """Every absolute module an import statement names in ``paths`` (at the top or inside a test),
    and ``pkg.name`` for each ``from pkg import name`` (a submodule or not)."""
    import ast

    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_the_worker_unit_tests_and_their_versions_need_neither_torch_nor_the_shared_data(tmp_path):
    """Whatever the modules of tests/unit/streamer import, and the versions ``export_versions``
    writes, loaded by the worker: no torch or transformers (a subprocess, so what other test
    modules imported does not count), and no test asks for the shared data (``data_dir``)."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    paths = sorted(here.glob("*.py")) + [here.parents[1] / "conftest.py"]
    modules = imported_modules(paths)
    assert {"tests.fixtures.make_tiny_model", "streamer.pipeline", "exporters.registry"} <= modules  # the scan works
    for path in paths:
        tree = ast.parse(path.read_text())
        args = {
            a.arg for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) for a in f.args.args
        }
        assert "data_dir" not in args, path.name
    code = (
        "import importlib, pathlib, sys\n"
        f"for name in {sorted(modules)!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as e:\n"  # pkg.name where name is not a module
        "        assert e.name == name, e\n"
        "from streamer.model import ModelBundle\n"
        "from tests.unit.streamer.test_variants import export_versions\n"
        f"root = export_versions(pathlib.Path({str(tmp_path)!r}))\n"
        "assert [ModelBundle.load(root / v).dim for v in ('v1', 'v2')] == [8, 16]\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    repo = here.parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    return export_versions(tmp_path_factory.mktemp("models2"), catalog_size=5)  # v2 lacks some of v1's items


async def test_each_user_is_ranked_by_their_arms_version(two_versions):
    from tests.fixtures.make_tiny_model import DIM, WIDE_DIM
    from tests.unit.streamer.conftest import CATALOG

    p = Pipeline(settings(), ModelBundle.load(two_versions / "v1"))
    p.upsert_items(CATALOG)
    p.add_version(ModelBundle.load(two_versions / "v2"))
    split = parse_split("ranker@v2:0.3,ranker@production:0.6,control:0.1")
    p.set_variants(split)
    store = DictStore()
    users = [f"u{i}" for i in range(60)]
    items = ["71053", "85123A", "NEWITEM", "22633", "NOTEXT1"]
    for rnd in range(2):
        res = await p.process(
            [
                msg(ev(rnd * 100 + k, u, items[(k + rnd) % len(items)], etype="view"), rnd * 100 + k)
                for k, u in enumerate(users)
            ],
            store,
        )
        assert len(res.recs) == len(users)
        for rec in res.recs:
            arm = variant_for(rec.user_id, split)
            want = {
                "ranker@v2": ("ranker@v2", "v2"),
                "ranker@production": ("ranker@v1", "v1"),
                "control": ("control", "v1+control"),
            }[arm]
            assert (rec.variant, rec.model_version) == want
            assert rec.items and len({i.item_id for i in rec.items}) == len(rec.items)
            st = UserState.from_bytes(store.data[rec.user_id])
            assert (st.space, st.dim) == (("v2", WIDE_DIM) if arm == "ranker@v2" else ("v1", DIM))
            assert st.rec_variant == rec.variant  # conversions credit the version's arm
    assert {r.variant for r in res.recs} == {"ranker@v2", "ranker@v1", "control"}
    assert len(p.versions["v2"].index) == len(p.index)  # the same items, row for row
    # the canary arm dropped (rollback): its users go back to production, their state rebuilt there
    p.drop_version("v2")
    p.set_variants(parse_split("ranker@production:0.9,control:0.1"))
    res = await p.process([msg(ev(900 + k, u, "71053", etype="view"), 900 + k) for k, u in enumerate(users)], store)
    assert {r.model_version for r in res.recs} <= {"v1", "v1+control"}
    assert all(UserState.from_bytes(store.data[u]).space == "v1" for u in users)


async def test_a_refused_version_never_enters_the_split(two_versions, caplog):
    import logging

    p = Pipeline(settings(), ModelBundle.load(two_versions / "v1"))
    loads = []

    def load(path):
        loads.append(path.name)
        return ModelBundle.load(path)

    loader = VersionLoader(p, load, model_root=two_versions, worker_id="w1")
    poller = VariantPoller(None, p, default=p.variants, key="k", interval_s=1, loader=loader)
    split = parse_split("ranker@v3-corrupt:0.2,ranker@v2:0.3,ranker@production:0.5")
    with caplog.at_level(logging.ERROR):
        await loader.prepare(split, {})
    assert poller.install(split, "test")
    assert set(p.versions) == {"v2"} and "v3-corrupt" in loader.refused and "checksum" in loader.refused["v3-corrupt"]
    assert any("v3-corrupt" in r.message and "refused" in r.message for r in caplog.records)
    # the refused arm's band is served by production; the other arms keep their bands
    assert p.serving_split() == (("ranker@v1", 0.2), ("ranker@v2", 0.3), ("ranker@v1", 0.5))
    store = DictStore()
    res = await p.process([msg(ev(k, f"x{k}", "71053"), k) for k in range(80)], store)
    got = {r.variant for r in res.recs}
    assert got == {"ranker@v1", "ranker@v2"} and {r.model_version for r in res.recs} == {"v1", "v2"}
    await loader.prepare(split, {})
    assert loads.count("v3-corrupt") == 1  # refused once, not retried every poll
    # refused by another worker: refused here too, without loading, and dropped if held
    loader2 = VersionLoader(p, load, model_root=two_versions, worker_id="w2")
    await loader2.prepare(split, {"v2": "w1: smoke test failed"})
    assert "v2" not in p.versions and "v2" in loader2.refused
    # a split no longer naming a version unloads it
    await loader.prepare(parse_split("ranker@v2:0.1,ranker:0.9"), {})
    assert "v2" in p.versions
    poller.install(parse_split("ranker:1"), "test")
    assert p.versions == {}
    report = loader.report(p.variants)
    assert report["production"] == "v1" and "v3-corrupt" in report["refused"]
    poller.install(split, "test")
    assert loader.report(p.variants)["serving"] == {"ranker@v1": 1.0}  # v2 dropped, v3 refused: all production


def test_model_refused_is_what_load_raises_for_the_corrupt_version(two_versions):
    with pytest.raises(ModelRefused, match="checksum"):
        ModelBundle.load(two_versions / "v3-corrupt")


def test_missing_version_at_start_names_the_setting(two_versions):
    from streamer.variants import missing_versions

    assert missing_versions(parse_split("ranker@v2:0.1,ranker:0.9"), two_versions) is None
    msg_ = missing_versions(parse_split("ranker@nope:0.1,ranker:0.9"), two_versions)
    assert msg_.startswith("STREAMREC_VARIANTS: no version nope")


def reseal(folder) -> None:
    """Rewrite the manifest's checksums after a file was damaged (a buggy export: the checksums pass)."""
    import json

    from exporters.registry import sha256_file

    m = json.loads((folder / "manifest.json").read_text())
    m["version"] = folder.name
    for name in m["files"]:
        m["files"][name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "damage, words",
    [
        ("truncated-ranker", "cannot load"),
        ("nan-vectors", "non-finite"),
        ("renamed", "names version"),
    ],
)
async def test_versions_failing_load_or_smoke_test_under_valid_checksums_are_refused(
    two_versions, tmp_path, damage, words
):
    """The worker's own loader (``ModelLoader.load``: checksums, sessions, smoke inference, finite vectors)."""
    import numpy as np

    from streamer.model import ModelLoader

    root = tmp_path / "store"
    root.mkdir()
    folder = root / f"v-{damage}"
    shutil.copytree(two_versions / "v2", folder)
    if damage == "truncated-ranker":
        for f in folder.glob("ranker*.onnx"):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "nan-vectors":
        vecs = np.load(folder / "item_vecs.npy")
        vecs[0, 0] = np.nan
        np.save(folder / "item_vecs.npy", vecs)
    if damage != "renamed":
        reseal(folder)  # else the manifest still names v2
    p = Pipeline(settings(), ModelBundle.load(two_versions / "v1"))
    loader = VersionLoader(p, ModelLoader(settings()).load, model_root=root, worker_id="w1")
    split = parse_split(f"ranker@{folder.name}:0.5,ranker:0.5")
    await loader.prepare(split, {})
    assert p.versions == {} and words in loader.refused[folder.name]
    p.set_variants(split)
    res = await p.process([msg(ev(k, f"y{k}", "71053"), k) for k in range(20)], DictStore())
    assert {r.model_version for r in res.recs} == {"v1"}  # its users are served by production


async def test_a_production_swap_realigns_the_versions_held(two_versions):
    from tests.unit.streamer.conftest import CATALOG

    p = Pipeline(settings(), ModelBundle.load(two_versions / "v1"))
    p.upsert_items(CATALOG)
    p.add_version(ModelBundle.load(two_versions / "v2"))
    p.set_variants(parse_split("ranker@v2:0.5,ranker@production:0.5"))
    store = DictStore()
    await p.process([msg(ev(k, f"z{k}", "NEWITEM"), k) for k in range(20)], store)
    # a new production (here v1 again, freshly loaded): the held v2 follows the new index's rows
    fresh = ModelBundle.load(two_versions / "v1")
    p.install(fresh, p.build_index(fresh, p.index))
    assert p.versions["v2"].index.base is p.index and len(p.versions["v2"].index) == len(p.index)
    res = await p.process([msg(ev(100 + k, f"z{k}", "22633"), 100 + k) for k in range(20)], store)
    assert {r.model_version for r in res.recs} == {"v1", "v2"}
    # the canary becomes production: it is no longer held twice, its arm is production's
    v2 = ModelBundle.load(two_versions / "v2")
    p.install(v2, p.build_index(v2, p.index))
    assert p.versions == {}
    res = await p.process([msg(ev(200 + k, f"z{k}", "22633"), 200 + k) for k in range(20)], store)
    assert {(r.model_version, r.variant) for r in res.recs} == {("v2", "ranker@v2")}


async def test_a_change_announced_by_the_tools_is_applied_without_waiting_for_the_poll(two_versions, redis_url):  # noqa: F811
    """Poll interval one hour: only the pub/sub announcement can apply the new split (real redis-server)."""
    import asyncio

    import redis.asyncio as aioredis

    from streamer import variants

    p = Pipeline(settings(), ModelBundle.load(two_versions / "v1"))
    a = aioredis.from_url(redis_url)
    loader = VersionLoader(p, ModelBundle.load, model_root=two_versions, redis=a, prefix="t9:", worker_id="w1")
    poller = VariantPoller(a, p, default=p.variants, key=variants.config_key("t9:"), interval_s=3600, loader=loader)
    task = asyncio.ensure_future(poller.run())
    try:
        await asyncio.wait_for(poller.first_poll.wait(), 60)
        assert variants.main(["set", "ranker@v2:0.5,ranker:0.5", "--redis-url", redis_url, "--prefix", "t9:"]) == 0
        for _ in range(600):
            if p.variants == (("ranker@v2", 0.5), ("ranker", 0.5)) and "v2" in p.versions:
                break
            await asyncio.sleep(0.1)
        assert p.variants == (("ranker@v2", 0.5), ("ranker", 0.5)) and "v2" in p.versions
        assert variants.main(["clear", "--redis-url", redis_url, "--prefix", "t9:"]) == 0
        for _ in range(600):
            if p.variants == (("ranker", 1.0),) and not p.versions:
                break
            await asyncio.sleep(0.1)
        assert p.variants == (("ranker", 1.0),) and not p.versions  # rollback: back, and v2 unloaded
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await a.aclose()
    assert poller._pubsub is None  # closed with the task


def test_a_held_version_offers_its_own_item_neighbours_on_the_base_rows():
    """The ``knn`` source of a ``ranker@<version>`` arm reads that version's neighbour lists,
    re-indexed by production's rows (another catalog order, an item production lacks dropped)."""
    import types

    import numpy as np

    from schemas.serving import ItemNeighbours
    from streamer.items import ItemIndex
    from streamer.model import AlignedIndex

    dim = 4
    base = ItemIndex(dim=dim)
    base.add_many(["a", "b", "c", "d"], np.eye(dim, dtype=np.float32))
    # the held version's catalog: another order, and "x" that production does not have
    ids = ["d", "x", "c", "a"]
    rows = np.array([[2, 1, 3], [0, -1, -1], [3, 0, 1], [2, 0, -1]], dtype=np.int32)
    sims = np.array([[0.9, 0.8, 0.1], [0.5, 0, 0], [0.7, 0.6, 0.4], [0.3, 0.2, 0]], dtype=np.float32)
    bundle = types.SimpleNamespace(
        dim=dim,
        item_ids=ids,
        item_vecs=np.eye(dim, dtype=np.float32)[[3, 0, 2, 0]],
        encoder=None,
        category_vecs={},
        neighbours=ItemNeighbours(rows, sims),
    )
    held = AlignedIndex(base, bundle)
    nb = held.neighbours
    assert nb is not base.neighbours and nb.rows.shape == (4, 3)
    by_id = {
        base.ids[r]: [(base.ids[int(j)], round(float(s), 3)) for j, s in zip(nb.rows[r], nb.sims[r]) if j >= 0]
        for r in range(4)
    }
    assert by_id == {
        "a": [("c", 0.3), ("d", 0.2)],
        "b": [],
        "c": [("a", 0.7), ("d", 0.6)],
        "d": [("c", 0.9), ("a", 0.1)],
    }
    # what the knn source offers a user who bought "d": that version's neighbours, as base rows
    offered, _anchor = nb.offer(np.array([base.pos["d"]]), 5)
    assert [base.ids[int(r)] for r in offered] == ["c", "a"]
    # a version without neighbour lists has no knn source on its arm (not production's lists)
    bundle.neighbours = None
    base.neighbours = ItemNeighbours(np.full((4, 1), -1, np.int32), np.zeros((4, 1), np.float32))
    assert AlignedIndex(base, bundle).neighbours is None
