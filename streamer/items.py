"""Stage 3 — the item index: every known item's vector, text, availability and popularity.

Fed by the ``items`` topic (catalog records) and by events (an item first seen in an event
exists from then on, without text, and is enriched when its catalog record arrives). The vectors
live in one growing float32 matrix, searched with an HNSW index (hnswlib, inner product on
L2-normalised vectors). A new item is added to the HNSW graph the moment it arrives, so it is
recommendable at once.

Vectors: items of the model's catalog use the version's ``item_vecs.npy``; a new item with text is
encoded by the version's ONNX item encoder; without text it gets its category vector when the
model has one, else a deterministic item-id hash vector (stable across workers and restarts).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import hnswlib
import numpy as np

from schemas import Item
from schemas.ranking import compose_item_vector
from schemas.ranking import item_text as _item_text
from schemas.serving import ItemNeighbours


def hash_vector(item_id: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def item_text(item: Item) -> str | None:
    """The encoder's input for an item: the job's rule (``schemas.ranking.item_text``), None when empty."""
    return _item_text(item.title, item.description) or None


@dataclass
class ItemIndex:
    dim: int
    capacity: int = 1024
    half_life_ms: float = 14 * 86_400_000.0

    def __post_init__(self) -> None:
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        self.titles: list[str | None] = []
        self.texts: list[str | None] = []
        self.categories: list[str | None] = []
        self.vecs = np.zeros((self.capacity, self.dim), dtype=np.float32)
        self.available = np.ones(self.capacity, dtype=bool)
        self.popularity = np.zeros(self.capacity, dtype=np.float64)  # decayed, relative to pop_ts
        self.pop_ts = 0
        self.ann = hnswlib.Index(space="ip", dim=self.dim)
        self.ann.init_index(max_elements=self.capacity, ef_construction=100, M=16, allow_replace_deleted=False)
        self.ann.set_ef(64)
        # the version's item-kNN neighbour lists (rows of its catalog = the first rows here), or None
        self.neighbours: ItemNeighbours | None = None

    def __len__(self) -> int:
        return len(self.ids)

    # ---- growth ---------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        cap = max(need, self.capacity * 2)
        vecs = np.zeros((cap, self.dim), dtype=np.float32)
        vecs[: self.capacity] = self.vecs
        self.vecs = vecs
        self.available = np.concatenate([self.available, np.ones(cap - self.capacity, dtype=bool)])
        self.popularity = np.concatenate([self.popularity, np.zeros(cap - self.capacity)])
        self.ann.resize_index(cap)
        self.capacity = cap

    def set_vectors(self, rows: list[int], vecs: np.ndarray) -> None:
        self.vecs[rows] = vecs
        self.ann.add_items(vecs, np.asarray(rows, dtype=np.int64), replace_deleted=False)

    def add_many(self, ids: list[str], vecs: np.ndarray) -> list[int]:
        """Add (or overwrite) items with known vectors in one HNSW call."""
        rows = []
        for item_id in ids:
            row = self.pos.get(item_id)
            if row is None:
                row = len(self.ids)
                self.pos[item_id] = row
                self.ids.append(item_id)
                self.titles.append(None)
                self.texts.append(None)
                self.categories.append(None)
            rows.append(row)
        self._grow(len(self.ids))
        if rows:
            self.set_vectors(rows, vecs)
        return rows

    def ensure(self, item_id: str) -> int:
        """Row of ``item_id``, creating a text-less item on first sight."""
        row = self.pos.get(item_id)
        if row is not None:
            return row
        return self.add_many([item_id], hash_vector(item_id, self.dim)[None, :])[0]

    def upsert_items(
        self, items: list[Item], text_vecs: np.ndarray | None, category_vecs: dict[str, np.ndarray]
    ) -> list[int]:
        """Apply catalog records; ``text_vecs`` holds the encoder output for the items with text,
        in order. Returns the rows touched."""
        vecs = np.empty((len(items), self.dim), dtype=np.float32)
        t = 0
        for i, item in enumerate(items):
            text = item_text(item)
            text_vec = None
            if text is not None and text_vecs is not None:
                text_vec = text_vecs[t]
                t += 1
            cat = category_vecs.get(item.category) if item.category else None
            v = compose_item_vector(text_vec, cat)
            vecs[i] = v if v is not None else hash_vector(item.item_id, self.dim)
        rows = self.add_many([it.item_id for it in items], vecs)
        self.set_metadata(items)
        return rows

    def set_metadata(self, items: list[Item]) -> None:
        """Title, text, category and availability of items already in the index."""
        for item in items:
            row = self.pos[item.item_id]
            self.titles[row] = item.title
            self.texts[row] = item_text(item)
            self.categories[row] = item.category
            self.available[row] = item.available

    # ---- popularity (trending) ------------------------------------------------------------
    def bump(self, row: int, weight: float, ts: int) -> None:
        """Decayed popularity in event time: counts relative to ``pop_ts``; rescaled when time moves."""
        if ts > self.pop_ts:
            if self.pop_ts:
                self.popularity[: len(self.ids)] *= math.pow(0.5, (ts - self.pop_ts) / self.half_life_ms)
            self.pop_ts = ts
            self.popularity[row] += weight
        else:
            self.popularity[row] += weight * math.pow(0.5, (self.pop_ts - ts) / self.half_life_ms)

    def trending(self, k: int) -> np.ndarray:
        n = len(self.ids)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        pop = np.where(self.available[:n], self.popularity[:n], -1.0)
        k = min(k, n)
        top = np.argpartition(-pop, k - 1)[:k]
        top = top[np.argsort(-pop[top], kind="stable")]
        return top[pop[top] > 0]

    # ---- nearest neighbours ----------------------------------------------------------------
    def nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and inner products of the ``k`` items nearest to each query vector."""
        n = len(self.ids)
        k = min(k, n)
        if k == 0:
            return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
        labels, dist = self.ann.knn_query(
            queries, k=k, num_threads=1
        )  # a batch's queries: threads cost more than they save
        return labels.astype(np.int64), (1.0 - dist).astype(np.float32)
