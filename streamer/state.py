"""Stage 2 — per-user state, updated incrementally and idempotently per event.

A user's state holds:

* ``seq``: the bounded recent interaction sequence ``(item_id, type, ts)``, fed to the ranker;
* ``items``: the personal profile ``item_id -> [weight sum, last ts, purchases, first ts]``
  (``schemas.repeat.update_profile``; repeat purchases matter in wholesale data: a user's own
  counts are the strongest single signal; a value written before ``first ts`` existed has three
  fields and is upgraded as it loads: ``schemas.repeat.upgrade_profiles`` sets its first ts to its last);
* ``emb``: a running user embedding, the event-type weighted, time-decayed sum of item vectors.
  Decay is applied in *event time* relative to ``emb_ts``, which makes the sum commutative: the
  same set of events gives the same embedding whatever order they arrive in;
* ``seen``: the last ``dedup_window`` event-id hashes. An event whose id is there is ignored, so a
  redelivery (at-least-once Kafka, a crash before commit, a producer retry) changes nothing;
* the search intent: ``last_query``, its event time ``query_ts`` and ``since_query``, the number
  of events applied after it (``search_intent`` says whether it still shapes the list);
* the live list, for online metrics (``streamer.attribution``): ``rec_items`` (item ids of the
  last list published for the user), ``rec_variant``, ``rec_ts`` (event time of the event that
  triggered it), ``rec_hits`` (which conversion kinds it already earned, a bit mask), and
  ``ab_seen`` (variants this user was ever shown, to count users per variant once).

Fields added later are read with defaults, so values written by an older worker still load.

The state is one value per user (one atomic changelog write): the dedup memory and the effect of
the event can never be persisted apart.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import orjson

from schemas.ranking import EVENT_TYPE_IDS, EVENT_WEIGHTS
from schemas.repeat import new_profile, update_profile, upgrade_profiles

MAX_PROFILE_ITEMS = 1000


def event_hash(event_id: str, _blake2b=hashlib.blake2b, _from_bytes=int.from_bytes) -> int:
    """Stable 63-bit hash of an event id (Python's hash() is salted per process). Runs per event:
    the defaults bind the two functions once."""
    return _from_bytes(_blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1


@dataclass
class UserState:
    dim: int
    space: str = ""  # model version whose item vectors built ``emb``
    emb: np.ndarray | None = None
    emb_ts: int = 0
    seq: deque = field(default_factory=deque)  # of (item_id, type_id, ts)
    items: dict[str, list] = field(default_factory=dict)  # item_id -> [weight, last_ts, purchases, first_ts]
    seen: deque = field(default_factory=deque)
    seen_set: set = field(default_factory=set)
    last_query: str | None = None
    events_applied: int = 0
    query_ts: int = 0
    since_query: int = 0
    rec_items: list = field(default_factory=list)
    rec_variant: str | None = None
    rec_ts: int = 0
    rec_hits: int = 0
    ab_seen: list = field(default_factory=list)

    # ---- idempotent update -------------------------------------------------------------
    def apply(
        self,
        event_id: str,
        etype: str,
        item_id: str | None,
        ts: int,
        item_vec: np.ndarray | None,
        *,
        max_seq_len: int,
        dedup_window: int,
        half_life_ms: float,
        query: str | None = None,
        embed: list | None = None,
    ) -> bool:
        """Apply one validated event. Returns False (and changes nothing) for a duplicate.
        ``embed``: a list to append the event's embedding update to, for ``add_to_embedding``
        later (the caller's, before anything reads ``emb``); None: updated now."""
        h = event_hash(event_id)
        if h in self.seen_set:
            return False
        self.seen.append(h)
        self.seen_set.add(h)
        while len(self.seen) > dedup_window:
            self.seen_set.discard(self.seen.popleft())
        self.events_applied += 1
        weight = EVENT_WEIGHTS.get(etype, 0.0)
        if etype == "search":
            self.last_query = query
            self.query_ts = ts
            self.since_query = 0
        elif self.last_query is not None:
            self.since_query += 1
        if item_id is not None:
            prof = self.items.get(item_id)
            if prof is None:
                prof = self.items[item_id] = new_profile(ts)
                if len(self.items) > MAX_PROFILE_ITEMS:
                    self._evict_profile()
            update_profile(prof, etype, weight, ts)  # schemas.repeat: the rebuy score reads it
            self.seq.append((item_id, EVENT_TYPE_IDS[etype], ts))
            while len(self.seq) > max_seq_len:
                self.seq.popleft()
        if item_vec is not None and weight != 0.0:
            if embed is None:
                self.add_to_embedding([(item_vec, weight, ts)], half_life_ms)
            else:
                embed.append((item_vec, weight, ts))
        return True

    def add_to_embedding(self, events: list[tuple[np.ndarray, float, int]], half_life_ms: float) -> None:
        """Fold events' float32 item vectors ``(vector, weight, ts)`` into the embedding, in their
        order, one event at a time:

            if ts > emb_ts:  emb *= f32(0.5 ** ((ts - emb_ts) / half_life));  emb_ts = ts
            emb += f32(weight) * vec                                         (ts >= emb_ts)
            emb += f32(weight * 0.5 ** ((emb_ts - ts) / half_life)) * vec    (an older event)

        The products of all the events are one multiply; the rescalings and sums stay one per
        event, in order (a reduction such as ``np.sum`` would round differently). The pipeline
        collects a user's events of a micro-batch and folds them here at once (``apply``'s
        ``embed``): three numpy calls per event were most of the state stage's cost."""
        if not events:
            return
        if self.emb is None:
            self.emb = np.zeros(self.dim, dtype=np.float32)
            self.emb_ts = events[0][2]
        emb_ts = self.emb_ts
        factors = []
        rescale = {}  # event index -> decay applied just before it
        for k, (_vec, weight, ts) in enumerate(events):
            if ts >= emb_ts:
                if ts > emb_ts:  # at the same time the decay is 0.5 ** 0 = 1: nothing to scale
                    rescale[k] = np.float32(math.pow(0.5, (ts - emb_ts) / half_life_ms))
                    emb_ts = ts
                factors.append(weight)
            else:
                factors.append(weight * math.pow(0.5, (emb_ts - ts) / half_life_ms))
        self.emb_ts = emb_ts
        prods = np.concatenate([e[0] for e in events], casting="no").reshape(len(events), len(self.emb))
        prods *= np.asarray(factors, dtype=np.float32)[:, None]
        emb = self.emb
        for k, prod in enumerate(prods):
            decay = rescale.get(k)
            if decay is not None:
                emb *= decay
            emb += prod

    def _evict_profile(self) -> None:
        """Keep the profile bounded: drop the least recently touched item."""
        oldest = min(self.items.items(), key=lambda kv: kv[1][1])[0]
        del self.items[oldest]

    def rebuild_embedding(self, vectors: dict[str, np.ndarray], space: str, dim: int, half_life_ms: float) -> None:
        """Re-derive the embedding in a new model's vector space (``dim``-d vectors; it may differ
        from the old space's) from the profile (after a swap)."""
        self.emb = None
        self.emb_ts = 0
        self.dim = dim
        events = []
        for item_id, (weight, last_ts, *_rest) in sorted(self.items.items(), key=lambda kv: kv[1][1]):
            vec = vectors.get(item_id)
            if vec is not None and weight > 0:
                events.append((vec, weight, last_ts))
        self.add_to_embedding(events, half_life_ms)
        self.space = space

    def search_intent(self, now_ms: int, max_events: int, max_age_ms: int) -> int | None:
        """Events applied since the last search while it still shapes the list (0 on the search
        event itself), or None when there is no search or it is older than ``max_events`` events
        or ``max_age_ms`` of event time."""
        if self.last_query is None or self.since_query > max_events or now_ms - self.query_ts > max_age_ms:
            return None
        return self.since_query

    def user_vector(self) -> np.ndarray | None:
        if self.emb is None:
            return None
        norm = float(np.linalg.norm(self.emb))
        return None if norm == 0.0 else self.emb / norm

    # ---- serialisation: one compact value per user -------------------------------------
    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "d": self.dim,
                "sp": self.space,
                "e": None if self.emb is None else base64.b64encode(self.emb.astype(np.float32).tobytes()).decode(),
                "et": self.emb_ts,
                "q": list(self.seq),
                "i": self.items,
                "s": base64.b64encode(np.asarray(self.seen, dtype=np.uint64).tobytes()).decode(),
                "lq": self.last_query,
                "n": self.events_applied,
                "qt": self.query_ts,
                "qk": self.since_query,
                "rl": None
                if self.rec_variant is None
                else {"i": self.rec_items, "v": self.rec_variant, "t": self.rec_ts, "h": self.rec_hits},
                "ab": self.ab_seen,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> "UserState":
        d = orjson.loads(raw)
        seen = deque(np.frombuffer(base64.b64decode(d["s"]), dtype=np.uint64).tolist())
        emb = None if d["e"] is None else np.frombuffer(base64.b64decode(d["e"]), dtype=np.float32).copy()
        rl = d.get("rl")
        return cls(
            dim=d["d"],
            space=d["sp"],
            emb=emb,
            emb_ts=d["et"],
            seq=deque(tuple(x) for x in d["q"]),
            items=upgrade_profiles(d["i"]),
            seen=seen,
            seen_set=set(seen),
            last_query=d.get("lq"),
            events_applied=d["n"],
            query_ts=d.get("qt", 0),
            # an older value knows no count: its query (if any) no longer shapes the list
            since_query=d.get("qk", 1 << 30),
            rec_items=rl["i"] if rl else [],
            rec_variant=rl["v"] if rl else None,
            rec_ts=rl["t"] if rl else 0,
            rec_hits=rl["h"] if rl else 0,
            ab_seen=d.get("ab", []),
        )

    def fingerprint(self) -> dict:
        """Comparable summary used to prove crash-and-redeliver == clean single pass."""
        return {
            "seq": list(self.seq),
            "items": {k: [round(v[0], 6), *v[1:]] for k, v in sorted(self.items.items())},
            "emb": None if self.emb is None else np.round(self.emb, 4).tolist(),
            "n": self.events_applied,
        }
