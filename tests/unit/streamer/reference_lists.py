"""The per-user candidate and list path as it was before the batched rewrite (issue 15), kept as
the reference that ``test_batched_lists.py`` compares the batched path with. Its candidate merging
and list assembly call ``schemas.serving`` (the declaration the offline evaluator uses too), so the
test also proves that the worker's batched path serves what ``exporters.served`` grades.

When the semantics change on purpose (sources, quotas, features, list assembly), change this
reference the same way: it states *what* a list is, one user at a time, in plain Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from schemas import RecItem, Recommendation
from schemas.ranking import COVIS_WINDOW, candidate_features
from schemas.serving import (
    SOURCES,
    CandidateQuota,
    ListParams,
    assemble,
    history_order,
    list_scores,
    merge_sources,
    order_with_search,
)
from streamer.candidates import CandidateConfig, CoVisitation
from streamer.items import ItemIndex
from streamer.lists import reason_for
from streamer.state import UserState


@dataclass
class Candidates:
    rows: np.ndarray  # int64 [C] item rows
    sources: list[str]  # per candidate
    # per candidate: query text (search), (anchor row, pair count) (covis), anchor row or None
    # (ann), (purchases, interactions, days) (trending), None (history)
    evidence: list
    feats: np.ndarray  # float32 [C, F]
    query_sim: np.ndarray | None = None  # float32 [C]: cosine to the active search query, if any
    knn: np.ndarray | None = None  # float64 [C]: item-kNN score, None when the index has no neighbours


def gather(
    user: UserState,
    index: ItemIndex,
    covis: CoVisitation,
    cfg: CandidateConfig,
    *,
    now_ms: int,
    trigger_item: str | None = None,
    trigger_type: str | None = None,
    query_vec: np.ndarray | None = None,
    trending_rows: np.ndarray | None = None,
    trending_evidence: list | None = None,
    meaningful: Callable[[int], bool] | None = None,
) -> Candidates:
    """Candidates for one user. ``meaningful(row)`` says whether an item's vector carries meaning
    (model catalog, text or category) rather than being an id-hash placeholder; the ``ann`` source
    is skipped when none of the user's recent items has one (the neighbours of a random vector are
    noise: a cold user then gets trending instead), and its "similar to" anchor is always such an item."""
    quota = CandidateQuota(cfg.n)
    offers: list[tuple[str, list[int], int]] = []  # (source, rows best first, quota): schemas.serving
    evidence_of: dict[str, object] = {}  # source -> evidence list (by offer position) or one value

    # history: the user's own items, strongest first (weight x recency)
    if user.items:
        profile = [(k, p) for k, p in user.items.items() if k in index.pos]
        order = history_order(
            np.asarray([p[0] for _k, p in profile]), np.asarray([p[1] for _k, p in profile]), quota.history
        )
        offers.append(("history", [index.pos[profile[i][0]] for i in order], cfg.n))
    if query_vec is not None and len(index):
        labels, _ = index.nearest(query_vec[None, :], quota.per_source)
        offers.append(("search", list(labels[0]), quota.per_source))
        evidence_of["search"] = user.last_query
    # knn: per neighbour of the user's items, the summed similarity and the most similar user item
    nb = index.neighbours
    knn_scores: dict[int, float] = {}
    if nb is not None:
        own = sorted({index.pos[k] for k in user.items if k in index.pos})
        entries: dict[int, list[tuple[float, int]]] = {}
        for h in own:
            if h < len(nb.rows):
                for r, sim in zip(nb.rows[h].tolist(), nb.sims[h].astype(np.float64).tolist()):
                    if r >= 0:
                        entries.setdefault(r, []).append((sim, h))
        anchor_of = {}
        for r, es in entries.items():
            es.sort(key=lambda e: (-e[0], e[1]))
            total = 0.0
            for sim, _h in es:
                total += sim
            knn_scores[r], anchor_of[r] = total, es[0][1]
        ranked = sorted((r for r in knn_scores if r not in set(own)), key=lambda r: (-knn_scores[r], r))[
            : quota.per_source
        ]
        if ranked:
            offers.append(("knn", ranked, quota.per_source))
            evidence_of["knn"] = [anchor_of[r] for r in ranked]
    recent_rows = [index.pos[i] for i, _t, _ts in list(user.seq)[-COVIS_WINDOW:] if i in index.pos]
    covis_scores = covis.neighbours(recent_rows)
    if covis_scores:
        ranked = sorted(covis_scores.items(), key=lambda kv: -kv[1][0])[: quota.per_source]
        offers.append(("covis", [r for r, _ in ranked], quota.per_source))
        evidence_of["covis"] = [(a, covis.pair_count(a, r)) for r, (_s, a) in ranked]
    uvec = user.user_vector()
    anchor_rows = [r for r in recent_rows if meaningful(r)] if meaningful is not None else recent_rows
    use_ann = bool(anchor_rows) or (meaningful is None) or (not recent_rows)  # no items: emb from searches
    if uvec is not None and len(index) and use_ann:
        labels, _ = index.nearest(uvec[None, :], quota.per_source)
        cand = labels[0]
        offers.append(("ann", list(cand), quota.per_source))
        if anchor_rows and len(cand):
            # the recent item each neighbour is closest to: "similar to <that item>"
            anchors = np.asarray(anchor_rows)[np.argmax(index.vecs[cand] @ index.vecs[anchor_rows].T, axis=1)]
            evidence_of["ann"] = [int(a) for a in anchors]
    if trending_rows is None:
        trending_rows, trending_evidence = index.trending(cfg.n), None
    offers.append(("trending", list(trending_rows), cfg.n))
    evidence_of["trending"] = trending_evidence
    cand_rows, cand_sources, offer_pos = merge_sources(cfg.n, offers)
    picked: dict[int, tuple[str, object]] = {}
    for r, src, i in zip(cand_rows, cand_sources, offer_pos):
        ev = evidence_of.get(src)
        picked[r] = (src, ev[i] if isinstance(ev, list) else ev)

    # filters
    drop: set[int] = set()
    n_items = len(index)
    for r in picked:
        if r >= n_items or not index.available[r]:
            drop.add(r)
    if cfg.filter_purchased:
        drop.update(index.pos[i] for i, p in user.items.items() if p[2] > 0 and i in index.pos)
    if cfg.filter_last_viewed and trigger_item is not None and trigger_type in ("view", "click"):
        row = index.pos.get(trigger_item)
        if row is not None:
            drop.add(row)
    keep = [r for r in picked if r not in drop]
    rows = np.asarray(keep, dtype=np.int64)

    # features (schemas.ranking.FEATURE_NAMES)
    c = len(rows)
    personal = np.zeros(c, dtype=np.float64)
    last = np.full(c, -1, dtype=np.int64)
    cov = np.zeros(c, dtype=np.float64)
    for j, r in enumerate(keep):
        prof = user.items.get(index.ids[r])
        if prof is not None:
            personal[j] = prof[0]
            last[j] = prof[1]
        cs = covis_scores.get(r)
        if cs is not None:
            cov[j] = cs[0]
    sim = index.vecs[rows] @ uvec if (uvec is not None and c) else np.zeros(c, dtype=np.float32)
    feats = candidate_features(personal, last, now_ms, cov, index.popularity[rows], sim)
    qsim = (index.vecs[rows] @ query_vec).astype(np.float32) if (query_vec is not None and c) else None
    knn = np.asarray([knn_scores.get(r, 0.0) for r in keep]) if nb is not None else None
    return Candidates(
        rows=rows,
        sources=[picked[r][0] for r in keep],
        evidence=[picked[r][1] for r in keep],
        feats=feats,
        query_sim=qsim,
        knn=knn,
    )


def build_list(
    user_id: str,
    user: UserState,
    cands: Candidates,
    scores: np.ndarray,
    index: ItemIndex,
    *,
    size: int,
    model_version: str,
    variant: str,
    event_id: str,
    event_ts: int,
    search_slots: int = 0,
    min_new: int = 0,
    knn_weight: float = 0.0,
    stack: tuple[float, ...] = (),
) -> Recommendation:
    new = np.fromiter((index.ids[int(r)] not in user.items for r in cands.rows), dtype=bool, count=len(cands.rows))
    params = ListParams(size, min_new, knn_weight, stack)
    src = np.asarray([SOURCES.index(s) for s in cands.sources], dtype=np.int64)
    scores = list_scores(scores, cands.knn, params, new, cands.feats, src, len(user.items))
    order, final = order_with_search(scores, cands.query_sim, assemble(scores, new, params), size, search_slots)
    items = []
    for j in order:
        row = int(cands.rows[j])
        items.append(
            RecItem(
                item_id=index.ids[row],
                score=round(float(final[j]), 6),
                reason=reason_for(cands.sources[j], cands.evidence[j], row, user, index),
                title=index.titles[row],
                source=cands.sources[j],
            )
        )
    return Recommendation(
        user_id=user_id,
        items=tuple(items),
        model_version=model_version,
        variant=variant,
        event_id=event_id,
        event_ts=event_ts,
        published_ts=int(time.time() * 1000),
    )


# ---- the ranker request path and the per-batch loop, as they were ------------------------------
import asyncio  # noqa: E402

from schemas.ranking import NUM_FEATURES  # noqa: E402
from streamer.ranking import CONTROL_WEIGHTS, RankRequest, _bucket  # noqa: E402
from streamer.variants import variant_for  # noqa: E402


def score_requests(self, requests: list[RankRequest]) -> list[np.ndarray]:
    if not requests:
        return []
    b = len(requests)
    lens = [min(len(r.seq_types), self.max_seq_len) for r in requests]
    l = _bucket(max(max(lens), 1))
    c = _bucket(max(len(r.cand_feats) for r in requests))
    seq_vecs = np.zeros((b, l, self.dim), dtype=np.float32)
    seq_types = np.zeros((b, l), dtype=np.int64)
    seq_mask = np.zeros((b, l), dtype=np.int64)
    cand_vecs = np.zeros((b, c, self.dim), dtype=np.float32)
    cand_feats = np.zeros((b, c, NUM_FEATURES), dtype=np.float32)
    for i, (r, n) in enumerate(zip(requests, lens)):
        if n:
            seq_vecs[i, :n] = r.seq_vecs[-n:]
            seq_types[i, :n] = r.seq_types[-n:]
            seq_mask[i, :n] = 1
        k = len(r.cand_feats)
        cand_vecs[i, :k] = r.cand_vecs
        cand_feats[i, :k] = r.cand_feats
    scores = self.bundle.score(seq_vecs, seq_types, seq_mask, cand_vecs, cand_feats)
    return [scores[i, : len(r.cand_feats)] for i, r in enumerate(requests)]


async def rank_reference(self, touched) -> list[Recommendation]:
    """``Pipeline._rank`` as it was (``self`` is the pipeline)."""
    s = self.settings
    trending = self.index.trending(s.candidates)
    trending_evidence = self.recent.counts(trending)
    intents = {
        u: t.state.search_intent(t.last_event.ts, s.search_intent_events, self.intent_ms) for u, t in touched.items()
    }
    qvecs = self.query_vectors([touched[u].state.last_query for u, k in intents.items() if k is not None])
    control_reqs, ranker_reqs = [], []
    for user_id, t in touched.items():
        st, ev = t.state, t.last_event
        qvec = qvecs[st.last_query] if intents[user_id] is not None else None
        cands = gather(
            st,
            self.index,
            self.covis,
            self.cand_cfg,
            now_ms=max(ev.ts, st.emb_ts),
            trigger_item=ev.item_id,
            trigger_type=ev.type,
            query_vec=qvec,
            trending_rows=trending,
            trending_evidence=trending_evidence,
            meaningful=self._meaningful,
        )
        seq = [(self.index.pos[i], ty) for i, ty, _ts in st.seq if i in self.index.pos]
        req = RankRequest(
            seq_vecs=self.index.vecs[[r for r, _ in seq]] if seq else np.zeros((0, self.bundle.dim), np.float32),
            seq_types=np.asarray([ty for _, ty in seq], dtype=np.int64),
            cand_vecs=self.index.vecs[cands.rows],
            cand_feats=cands.feats,
        )
        variant = variant_for(user_id, self.variants)
        use_ranker = self.settings.ranking and variant == "ranker"
        (ranker_reqs if use_ranker else control_reqs).append((user_id, t, cands, req, variant))
    scored = []
    if ranker_reqs:
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(
            None, lambda reqs: score_requests(self.ranker, reqs), [r[3] for r in ranker_reqs if len(r[2].rows)]
        )
        it = iter(scores)
        scored += [(r, next(it) if len(r[2].rows) else np.zeros(0, np.float32)) for r in ranker_reqs]
    if control_reqs:
        scored += list(zip(control_reqs, [r.cand_feats @ CONTROL_WEIGHTS for r in [r[3] for r in control_reqs]]))
    recs = []
    for (user_id, t, cands, _req, variant), scores in scored:
        version = (
            self.bundle.version if variant == "ranker" and self.settings.ranking else f"{self.bundle.version}+control"
        )
        recs.append(
            build_list(
                user_id,
                t.state,
                cands,
                scores,
                self.index,
                size=s.list_size,
                model_version=version,
                variant=variant,
                event_id=t.last_event.event_id,
                event_ts=t.last_event.ts,
                search_slots=self.search_slots(intents[user_id]),
                min_new=self.list_params.min_new,
                knn_weight=self.list_params.knn_weight,
                stack=self.list_params.stack,
            )
        )
    return recs
