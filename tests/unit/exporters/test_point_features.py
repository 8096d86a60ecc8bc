"""Offline ranker features against a naive event-by-event replay, and no look-ahead."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import numpy as np

from exporters.dataset import build_interactions
from exporters.features import COVIS_WINDOW, HALF_LIFE_DAYS, HOUR_MS, build_points
from schemas.models import Event
from schemas.ranking import DAY_MS, EVENT_TYPE_IDS, EVENT_WEIGHTS, candidate_features

T0 = 1_500_000_000_000
TYPES = ["view", "view", "add_to_cart", "purchase", "favorite", "click"]


def synthetic(n_events: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows, t = [], T0
    for i in range(n_events):
        t += int(rng.integers(0, 3 * HOUR_MS))
        rows.append((f"u{rng.integers(0, 6)}", f"i{rng.integers(0, 15)}", t, TYPES[rng.integers(0, len(TYPES))]))
    events = [Event(event_id=f"e{i}", user_id=u, type=ty, ts=ts, item_id=it) for i, (u, it, ts, ty) in enumerate(rows)]
    items = {f"i{k}": SimpleNamespace(item_id=f"i{k}", title=None, description=None, category=None) for k in range(15)}
    return SimpleNamespace(name="taobao-like", events=events, items=items)


def replay(inter, upto: int, now: int, vecs: np.ndarray) -> np.ndarray:
    """Features of every item for the user of event ``upto`` after events 0..upto, built the
    way the worker does it, one event at a time."""
    user = inter.users[upto]
    covis: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    seqs: dict[int, list[int]] = defaultdict(list)
    weight, last = defaultdict(float), {}
    emb = np.zeros(vecs.shape[1])
    half = HALF_LIFE_DAYS * DAY_MS
    pop = np.zeros(inter.n_items)
    hour_start = (now // HOUR_MS) * HOUR_MS
    names = {v: k for k, v in EVENT_TYPE_IDS.items()}
    for e in range(upto + 1):
        u, i, ts, w = inter.users[e], inter.items[e], inter.ts[e], EVENT_WEIGHTS[names[inter.types[e]]]
        if w > 0 and ts <= now:
            for other in set(seqs[u][-COVIS_WINDOW:]):
                if other != i:
                    covis[other][i] += 1
                    covis[i][other] += 1
            if ts < hour_start:
                pop[i] += w * 2 ** (-(hour_start - ts) / half)
        seqs[u].append(i)
        if u == user:
            weight[i] += w
            last[i] = ts
            emb += w * 2 ** (-(now - ts) / half) * vecs[i]
    cov = np.zeros(inter.n_items)
    for r in seqs[user][-COVIS_WINDOW:]:
        for j, c in covis[r].items():
            cov[j] += c
    last_ms = np.array([last.get(j, -1) for j in range(inter.n_items)])
    pw = np.array([weight.get(j, 0.0) for j in range(inter.n_items)])
    sim = vecs @ (emb / np.linalg.norm(emb)) if np.linalg.norm(emb) > 0 else np.zeros(inter.n_items)
    return candidate_features(pw, last_ms, int(now), cov, pop, sim)


def test_features_match_event_by_event_replay() -> None:
    inter = build_interactions(synthetic())
    vecs = np.random.default_rng(1).standard_normal((inter.n_items, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    everything = np.ones(len(inter.users), dtype=bool)
    as_of = np.array([30, 120, 250, 399])
    points = build_points(inter, everything, everything, as_of, max_seq_len=7)
    got = points.features(np.arange(len(as_of)), vecs)
    for p, e in enumerate(as_of):
        expected = replay(inter, int(e), int(inter.ts[e]), vecs)
        np.testing.assert_allclose(got[p], expected, rtol=1e-4, atol=1e-4)
        user_events = np.flatnonzero(inter.users[: e + 1] == inter.users[e])[-7:]
        np.testing.assert_array_equal(points.seq_items[p, -len(user_events) :], inter.items[user_events])
        assert (points.seq_items[p, : 7 - len(user_events)] == -1).all()


def test_no_look_ahead() -> None:
    """Appending later events changes nothing about earlier points."""
    full = build_interactions(synthetic(400))
    early = build_interactions(synthetic(400))
    cut = 200
    mask_early = np.arange(len(early.users)) <= cut
    vecs = np.ones((full.n_items, 4), dtype=np.float32) / 2
    as_of = np.array([50, 150, 200])
    a = build_points(full, np.ones(len(full.users), bool), np.ones(len(full.users), bool), as_of, 5).features(
        np.arange(3), vecs
    )
    b = build_points(early, mask_early, mask_early, as_of, 5).features(np.arange(3), vecs)
    np.testing.assert_allclose(a, b, atol=1e-6)
