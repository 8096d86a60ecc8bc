"""The worker's per-batch flow, one direction, no Kafka or faust inside:

    raw messages ─► ingest ─► state (idempotent) ─► candidates ─► ranking ─► publish

``Pipeline.process`` takes one micro-batch of raw ``events`` messages and a ``StateStore`` (the
faust table in production, a dict in unit tests) and returns what must be written: dead letters
and recommendation lists. Users with several events in the batch are re-ranked once (coalescing),
and all of the batch's users together: candidates and features as array operations over the
whole batch (``candidates.gather_batch``), one ranker call per chunk of users on the ranker's own
thread, overlapped with this thread's work (``_rank``).
A user touched only by redelivered duplicates is re-ranked too, so a list lost in a crash between
state write and publish is published on redelivery; and their state is written again, so a
changelog write lost in a crash (the state kept only by the local store) is made on redelivery.

Users' states are written after ranking, together with the list just built for them (its items
and variant, for attributing later conversions: ``streamer.attribution``); the batch's A/B
counters come back in ``BatchResult.stats`` for the app to write next to the lists.

Search intent: a search event encodes the query with the item text encoder; for that event and
the next ``STREAMREC_SEARCH_INTENT_EVENTS`` events of the user (within
``STREAMREC_SEARCH_INTENT_S`` of event time) the query's nearest items join the candidates and
the best matches take the top ``STREAMREC_SEARCH_SHARE`` of the list, halved with each later
event (20 items: 10, 5, 2, 1 slots), so the intent fades instead of stopping dead.

The A/B split (``self.variants``) starts as ``STREAMREC_VARIANTS`` and may be replaced at run time
between batches (``set_variants``; ``streamer.variants`` polls the override from Redis). Arms
``ranker@<version>`` are served by versions held next to production (``add_version``:
``streamer.model.ServedVersion``, an item index in that version's space over the same items):
each user's arm is looked up once per batch (stable hash), its state lives in that arm's vector
space, and the batch's users are ranked in one group per version. A list carries the version
that ranked it; an arm whose version is not loaded (refused) is served by production.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

import numpy as np

from schemas import DeadLetter, Event, Recommendation
from schemas.ranking import EVENT_WEIGHTS
from schemas.serving import ListParams
from streamer import metrics
from streamer.attribution import Stats, attribute, record_list
from streamer.candidates import CandidateConfig, CoVisitation, RecentCounts, UserRequest, gather_batch
from streamer.ingest import Pseudonymizer, RawMessage, parse_event
from streamer.items import ItemIndex, item_text
from streamer.lists import build_lists
from streamer.model import ModelBundle, ServedVersion, cached_query_vectors
from streamer.ranking import CandidateScorer, OnnxRanker, pad_width
from streamer.settings import Settings
from streamer.state import UserState
from streamer.variants import Split, arm_version, variant_for

__all__ = ["BatchResult", "Pipeline", "StateStore", "variant_for"]

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
QUERY_CACHE_SIZE = 4096
# per-event counters, bound once (``labels()`` per event cost ~5 us)
_COUNT = {o: metrics.EVENTS.labels("events", o) for o in ("valid", "duplicate", "dead_letter", "erased")}
RANK_CHUNK = 8  # users: a batch of at least twice this many is ranked in two overlapping chunks (``_rank``)


class StateStore(Protocol):
    """Users' state values keyed by (partition of the ``events`` topic, user id): a user's state
    lives with the partition their events come from (changelog partition, local database)."""

    def get(self, partition: int, user_id: str) -> bytes | None: ...
    def put(self, partition: int, user_id: str, value: bytes) -> None: ...
    def delete(self, partition: int, user_id: str) -> None: ...


@dataclass
class BatchResult:
    dead_letters: list[DeadLetter] = field(default_factory=list)
    recs: list[Recommendation] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    trigger_ts: dict[str, int] = field(default_factory=dict)  # user -> Kafka timestamp of the last event
    stats: Stats = field(default_factory=Stats)  # A/B impressions and attributed conversions of this batch


@dataclass
class _Touched:
    state: UserState
    last_event: Event
    last_msg: RawMessage
    dirty: bool = False
    applied: bool = False  # at least one new (not duplicate) event in this batch
    variant: str = "ranker"  # the user's arm (label as lists and stats carry it)
    space: object = None  # what ranks the user: the Pipeline (production) or a ServedVersion
    embed: list = field(default_factory=list)  # the batch's embedding updates (``UserState.add_to_embedding``)


class Pipeline:
    def __init__(self, settings: Settings, bundle: ModelBundle) -> None:
        self.settings = settings
        self.half_life_ms = settings.half_life_days * DAY_MS
        self.pseudonymize = Pseudonymizer(settings.pseudonymize_key)
        self.covis = CoVisitation()
        self.cand_cfg = CandidateConfig(settings.candidates, settings.filter_purchased, settings.filter_last_viewed)
        self.control = CandidateScorer()
        self.recent = RecentCounts()
        self.variants: Split = settings.variants
        self.versions: dict[str, ServedVersion] = {}  # versions held next to production for the split
        self._arms: dict[str, tuple[str, object]] = {}  # split label -> (list label, space)
        self.window_ms = settings.attribution_window_s * 1000
        self.intent_ms = settings.search_intent_s * 1000
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        # the ranker's calls run here, one at a time, in order, off the event loop's thread
        self._ranker_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ranker")
        self.index: ItemIndex
        self.bundle: ModelBundle
        self.ranker: OnnxRanker
        self.install(bundle, self.build_index(bundle, None))

    # ---- model and item index -------------------------------------------------------------
    def build_index(self, bundle: ModelBundle, previous: ItemIndex | None) -> ItemIndex:
        """Item index in ``bundle``'s vector space: its catalog, plus every item the previous
        index knew (re-encoded with the new encoder), with popularity carried over."""
        index = ItemIndex(dim=bundle.dim, capacity=max(1024, 2 * len(bundle.item_ids)), half_life_ms=self.half_life_ms)
        if bundle.item_ids:
            index.add_many(bundle.item_ids, bundle.item_vecs)
        index.neighbours = bundle.neighbours  # rows of its catalog: the first rows of the index
        if previous is not None and len(previous):
            from schemas import Item

            new_items = []
            for iid, r in previous.pos.items():
                record = Item(
                    item_id=iid,
                    title=previous.titles[r],
                    category=previous.categories[r],
                    available=bool(previous.available[r]),
                )
                row = index.pos.get(iid)
                if row is None:
                    new_items.append(record)  # not in the new catalog: re-encode in the new space
                else:
                    index.titles[row], index.texts[row] = previous.titles[r], previous.texts[r]
                    index.categories[row], index.available[row] = previous.categories[r], previous.available[r]
            if new_items:
                texts = [t for t in (item_text(it) for it in new_items) if t]
                index.upsert_items(new_items, bundle.encode_texts(texts), bundle.category_vecs)
            for iid, r in previous.pos.items():
                index.popularity[index.pos[iid]] = previous.popularity[r]
            index.pop_ts = previous.pop_ts
        return index

    def install(self, bundle: ModelBundle, index: ItemIndex) -> None:
        """Switch model and index together (called between batches). Counts kept by item row
        (co-visitation, recent counts) follow their items to the new index's rows."""
        previous = getattr(self, "index", None)
        if previous is not None and previous is not index:
            mapping = {r: index.pos[i] for i, r in previous.pos.items() if i in index.pos}
            self.covis.remap(mapping)
            self.recent.remap(mapping)
        trained = (bundle.manifest.get("feature_params") or {}).get("half_life_days")
        if trained is not None and float(trained) != self.settings.half_life_days:
            log.warning(
                "model %s was trained with half_life_days=%s, this worker uses STREAMREC_HALF_LIFE_DAYS=%s: "
                "its features will differ from training",
                bundle.version,
                trained,
                self.settings.half_life_days,
            )
        self.bundle, self.index = bundle, index
        self._query_cache.clear()  # query vectors belong to the old encoder's space
        self.versions.pop(bundle.version, None)  # a promoted canary is production now
        for version, served in list(self.versions.items()):  # re-aligned to the new index's rows
            self.versions[version] = ServedVersion(served.bundle, index, self.settings.list_size)
        self._arms.clear()
        self.model_items = set(bundle.item_ids)
        self.ranker = OnnxRanker(bundle)
        self.list_params = ListParams.from_manifest(bundle.manifest, self.settings.list_size)  # the job's validated mix
        metrics.MODEL.clear()
        metrics.MODEL.labels(bundle.version, bundle.ranker_file, bundle.provider).set(1)
        metrics.ITEMS.set(len(index))

    def _needs_vector(self, items, bundle: ModelBundle) -> list:
        """Items the model has no vector for. The model's own vectors (text + learned id part) win
        for its catalog; only items new to it go through the text encoder."""
        known = self.model_items if bundle is self.bundle else set(bundle.item_ids)
        return [it for it in items if it.item_id not in known]

    def encode_items(self, items, bundle: ModelBundle) -> np.ndarray:
        """Text vectors of the new items that have text (CPU-heavy: run it off the event loop)."""
        new = self._needs_vector(items, bundle)
        return bundle.encode_texts([t for t in (item_text(it) for it in new) if t])

    def upsert_items(self, items, text_vecs: np.ndarray | None = None, bundle: ModelBundle | None = None) -> None:
        """Apply catalog records. ``text_vecs`` from ``encode_items`` with ``bundle``; recomputed
        when the model was swapped in between."""
        if text_vecs is None or bundle is not self.bundle:
            text_vecs = self.encode_items(items, self.bundle)
        new = self._needs_vector(items, self.bundle)
        if new:
            self.index.upsert_items(new, text_vecs, self.bundle.category_vecs)
        if len(new) < len(items):
            self.index.set_metadata([it for it in items if it.item_id in self.model_items])
        if self.versions:
            rows = [self.index.pos[it.item_id] for it in items]
            for served in self.versions.values():
                served.index.refresh(rows)
        metrics.ITEMS.set(len(self.index))

    def set_variants(self, split: Split) -> None:
        """Replace the A/B split (between batches; lists name the variant that built them)."""
        self.variants = split
        self._arms.clear()

    # ---- versions next to production (ranker@<version> arms) -------------------------------
    def add_version(self, bundle: ModelBundle) -> None:
        """Hold a verified, loaded version for the split's ``ranker@<version>`` arms."""
        self.versions[bundle.version] = ServedVersion(bundle, self.index, self.settings.list_size)
        self._arms.clear()

    def drop_version(self, version: str) -> bool:
        self._arms.clear()
        return self.versions.pop(version, None) is not None

    def _arm(self, label: str) -> tuple[str, object]:
        """(label the list carries, what ranks it) for a split label: ``ranker@production`` is
        labelled with production's version; an arm whose version is not held (refused, not yet
        loaded) falls to production and is labelled so."""
        arm = self._arms.get(label)
        if arm is None:
            version = arm_version(label)
            served = self.versions.get(version) if version is not None else None
            if version is None or label == "ranker":
                arm = (label, self)
            elif served is not None:
                arm = (label, served)
            else:
                arm = (f"ranker@{self.bundle.version}", self)
            self._arms[label] = arm
        return arm

    def serving_split(self) -> Split:
        """The split as served here: each arm's list label (refused arms under production's)."""
        return tuple((self._arm(label)[0], w) for label, w in self.variants)

    def _meaningful(self, row: int) -> bool:
        """The item's vector means something: the model's own, from text, or from a category
        (an item known only from events has an id-hash placeholder)."""
        idx = self.index
        return idx.texts[row] is not None or idx.categories[row] is not None or idx.ids[row] in self.model_items

    def search_slots(self, since_search: int | None) -> int:
        """Top slots for the best query matches: ``list_size * share`` on the search event, halved
        for each later event, at least 1 while the intent lasts; 0 without one."""
        if since_search is None:
            return 0
        s = self.settings
        return max(int(s.list_size * s.search_share / 2**since_search), 1) if s.search_share > 0 else 0

    def query_vectors(self, queries: list[str]) -> dict[str, np.ndarray]:
        """Encoded search queries, one encoder call for the ones not cached (LRU, per model).
        Empty for a version without an item encoder (no text): its searches are like empty ones."""
        return cached_query_vectors(self.bundle, self._query_cache, queries, QUERY_CACHE_SIZE)

    # ---- one micro-batch ----------------------------------------------------------------
    async def process(self, msgs: list[RawMessage], store: StateStore) -> BatchResult:
        out = BatchResult()
        t0 = time.perf_counter()
        touched: dict[str, _Touched] = {}
        pseudonymize, worker_id, apply, stats = self.pseudonymize, self.settings.worker_id, self._apply, out.stats
        n_dead = n_erased = 0
        for msg in msgs:
            parsed = parse_event(msg, pseudonymize, worker_id)
            if isinstance(parsed, DeadLetter):
                out.dead_letters.append(parsed)
                n_dead += 1
                metrics.DLQ.labels(parsed.error_code).inc()
                continue
            ev = parsed
            if ev.type == "erase_user":
                touched.pop(ev.user_id, None)
                store.delete(msg.partition, ev.user_id)
                out.erased.append(ev.user_id)
                n_erased += 1
                continue
            t = touched.get(ev.user_id)
            if t is None:
                variant, space = self._arm(variant_for(ev.user_id, self.variants))  # the user's arm: one lookup
                b = space.bundle
                raw = store.get(msg.partition, ev.user_id)
                st = UserState.from_bytes(raw) if raw else UserState(dim=b.dim, space=b.version)
                t = touched[ev.user_id] = _Touched(st, ev, msg, variant=variant, space=space)
                if st.space != b.version or st.dim != b.dim:  # built by another model
                    st.rebuild_embedding(self._vectors_of(st, space.index), b.version, b.dim, self.half_life_ms)
                    t.dirty = True
            t.last_event, t.last_msg = ev, msg
            if apply(t.state, ev, stats, t.space, t.embed):
                t.dirty = t.applied = True
                out.applied += 1
            else:
                # A redelivered event is already in the state read here, but maybe only in the local
                # store: a crash can lose the changelog write that carried it (the commit waits for
                # that write, so its events are redelivered). Writing the state again puts it back in
                # the changelog, which a restarted or new owner of the partition recovers from.
                t.dirty = True
                out.duplicates += 1
        # per-event counters, counted once per batch (``inc`` per event cost ~2 us)
        for outcome, n in (
            ("valid", out.applied),
            ("duplicate", out.duplicates),
            ("dead_letter", n_dead),
            ("erased", n_erased),
        ):
            if n:
                _COUNT[outcome].inc(n)
        half_life_ms = self.half_life_ms
        for user_id, t in touched.items():
            out.trigger_ts[user_id] = t.last_msg.timestamp_ms
            if t.embed:  # each user's events of the batch in one step, in order, before ranking reads them
                t.state.add_to_embedding(t.embed, half_life_ms)
                t.embed.clear()
        t1 = time.perf_counter()
        if touched:
            out.recs = await self._rank(touched)
        t2 = time.perf_counter()
        metrics.STAGE.labels("candidates_ranking").observe(t2 - t1)
        for rec in out.recs:
            t = touched[rec.user_id]
            if t.applied:  # a fresh list (not a re-publication for duplicates): the user's live list
                record_list(t.state, [i.item_id for i in rec.items], rec.variant, rec.event_ts, out.stats)
        for user_id, t in touched.items():
            if t.dirty:
                store.put(t.last_msg.partition, user_id, t.state.to_bytes())
        metrics.STAGE.labels("ingest_state").observe((t1 - t0) + (time.perf_counter() - t2))  # both state phases
        metrics.BATCH.observe(len(msgs))
        metrics.RANKED.observe(len(touched))
        return out

    def _vectors_of(self, st: UserState, index=None) -> dict[str, np.ndarray]:
        index = self.index if index is None else index
        if index is not self.index:
            index.sync()
        return {i: index.vecs[index.pos[i]] for i in st.items if i in index.pos}

    def _apply(self, st: UserState, ev: Event, stats: Stats, space=None, embed: list | None = None) -> bool:
        """``space``: the user's arm (the Pipeline for production, or a ServedVersion), whose
        vector space the user's embedding lives in. ``embed``: where the event's embedding update
        waits for ``UserState.add_to_embedding`` (``process`` folds them after the batch's events);
        None: applied now."""
        space = self if space is None else space
        index = self.index
        row = None
        vec = None
        etype, item_id, ts = ev.type, ev.item_id, ev.ts
        if item_id is not None:
            pos = index.pos
            row = pos.get(item_id)
            if row is None:
                row = index.ensure(item_id)
            # the user's last 5 items before this event (read from the newest end of the deque)
            recent_rows = [pos[i] for i, _t, _ts in islice(reversed(st.seq), 5) if i in pos]
            recent_rows.reverse()  # oldest first, as the co-visitation update has always seen them
            if space is not self:
                space.index.sync()
            vec = space.index.vecs[row]
        if etype == "search" and ev.query:
            vec = space.query_vectors([ev.query]).get(ev.query)
        s = self.settings
        applied = st.apply(
            ev.event_id,
            etype,
            item_id,
            ts,
            vec,
            max_seq_len=s.max_seq_len,
            dedup_window=s.dedup_window,
            half_life_ms=self.half_life_ms,
            query=ev.query,
            embed=embed,
        )
        if applied and row is not None:
            # against the list that was live when the event happened (``apply`` leaves it alone)
            attribute(st, etype, item_id, ts, self.window_ms, stats)
            weight = EVENT_WEIGHTS.get(etype, 0.0)
            if weight > 0:
                index.bump(row, weight, ts)
                self.covis.update(recent_rows, row)
            self.recent.add(row, etype, ts)
        return applied

    async def _rank(self, touched: dict[str, _Touched]) -> list[Recommendation]:
        """Lists for every touched user, one group per version of the split (production and the
        control arm in one, as before; each ``ranker@<version>`` arm held here in its own)."""
        groups: dict[int, dict[str, _Touched]] = {}
        for user, t in touched.items():
            groups.setdefault(id(t.space), {})[user] = t
        if len(groups) == 1:
            return await self._rank_group(touched, next(iter(touched.values())).space)
        trending = self.index.trending(self.settings.candidates)
        recs: list[Recommendation] = []
        for group in groups.values():
            recs += await self._rank_group(group, next(iter(group.values())).space, trending)
        return recs

    async def _rank_group(self, touched: dict[str, _Touched], space, trending=None) -> list[Recommendation]:
        """Lists for ``touched`` users of one version (``space``: the Pipeline or a ServedVersion).
        Candidates for many users at once (``candidates.gather_batch``), one ranker call per chunk of users for the ``ranker`` arm,
        one feature blend for the ``control`` arm, then the lists of every user at once (``lists.build_lists``).

        A batch of at least ``2 * RANK_CHUNK`` users of which some are ranked by the ranker goes in
        two chunks so the ranker (onnxruntime, its own thread, no GIL) scores the first while this
        thread gathers the second's candidates, and scores the second while this thread builds the
        first's lists; with nobody to rank (ranking off, all in the control arm) one chunk. Users
        are independent, so the lists are the same either way."""
        s = self.settings
        index = space.index
        if index is not self.index:
            index.sync()
        if trending is None:
            trending = self.index.trending(s.candidates)
        trending_evidence = self.recent.counts(trending)
        users = list(touched)
        ts = [touched[u] for u in users]
        intents = [
            t.state.search_intent(t.last_event.ts, s.search_intent_events, self.intent_ms)
            if space.bundle.encoder is not None
            else None
            for t in ts
        ]
        qvecs = space.query_vectors([t.state.last_query for t, k in zip(ts, intents) if k is not None])
        variants = [t.variant for t in ts]
        use_ranker = [s.ranking and v != "control" for v in variants]
        n = len(users)
        # two chunks only pay when the ranker has work to overlap; without it they double the
        # per-chunk fixed costs (one HNSW call, one merge, one feature pass per chunk)
        split = n >= 2 * RANK_CHUNK and any(use_ranker)
        parts = [range(0, n // 2), range(n // 2, n)] if split else [range(0, n)]
        loop = asyncio.get_running_loop()
        work = []  # per chunk: (user indices, candidates, pending ranker scores or None)
        for part in parts:
            reqs = [
                UserRequest(
                    ts[i].state,
                    max(ts[i].last_event.ts, ts[i].state.emb_ts),
                    ts[i].last_event.item_id,
                    ts[i].last_event.type,
                    qvecs[ts[i].state.last_query] if intents[i] is not None else None,
                )
                for i in part
            ]
            batch = gather_batch(
                reqs,
                index,
                self.covis,
                self.cand_cfg,
                trending_rows=trending,
                trending_evidence=trending_evidence,
                meaningful=self._meaningful,
                pad_vectors=any(use_ranker[i] for i in part),
            )
            off = batch.offsets
            rankable = [k for k, i in enumerate(part) if use_ranker[i] and off[k + 1] > off[k]]
            pending = None
            if rankable:
                seqs = [self._seq_rows(ts[part[k]].state, space.ranker.max_seq_len) for k in rankable]
                # the ranker's padded input, gathered by ``gather_batch``: a view when every user
                # of the chunk is ranked, else their rows at the width their own counts need
                counts = batch.counts[rankable]
                width = pad_width(counts)
                c_vecs, c_feats = batch.padded_vecs, batch.padded(batch.feats, batch.padded_vecs.shape[1])
                if len(rankable) < len(part) or width < c_vecs.shape[1]:
                    c_vecs = np.ascontiguousarray(c_vecs[rankable, :width])
                    c_feats = np.ascontiguousarray(c_feats[rankable, :width])
                pending = loop.run_in_executor(
                    self._ranker_thread,
                    space.ranker.score_padded,
                    index.vecs,
                    [r for r, _ in seqs],
                    [t for _, t in seqs],
                    c_vecs,
                    c_feats,
                    counts,
                )
            work.append((part, batch, rankable, pending))
        recs: dict[int, Recommendation] = {}
        for part, batch, rankable, pending in work:
            off = batch.offsets
            scores = [np.zeros(0, np.float32)] * len(part)
            if not all(use_ranker[i] for i in part):
                flat = self.control.score_feats(batch.feats)
                for k, i in enumerate(part):
                    if not use_ranker[i]:
                        scores[k] = flat[off[k] : off[k + 1]]
            if pending is not None:
                for k, sc in zip(rankable, await pending):
                    scores[k] = sc
            built = build_lists(
                [users[i] for i in part],
                [ts[i].state for i in part],
                batch,
                scores,
                index,
                params=space.list_params,
                model_versions=[
                    space.bundle.version if use_ranker[i] else f"{self.bundle.version}+control" for i in part
                ],
                variants=[variants[i] for i in part],
                event_ids=[ts[i].last_event.event_id for i in part],
                event_ts=[ts[i].last_event.ts for i in part],
                search_slots=[self.search_slots(intents[i]) for i in part],
            )
            recs.update(zip(part, built))
        # the ranker arm's lists first, as before
        return [recs[i] for i in range(n) if use_ranker[i]] + [recs[i] for i in range(n) if not use_ranker[i]]

    def _seq_rows(self, st: UserState, last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Item rows and type ids of the user's sequence (items the index knows), oldest first;
        only its ``last`` such items when given (all the ranker reads: ``OnnxRanker.max_seq_len``)."""
        pos = self.index.pos
        seq = []
        for i, ty, _ts in reversed(st.seq):  # from the newest: no walk over what the ranker does not read
            if i in pos:
                seq.append((pos[i], ty))
                if len(seq) == last:
                    break
        if not seq:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        seq.reverse()
        arr = np.asarray(seq, dtype=np.int64)
        return arr[:, 0], arr[:, 1]
