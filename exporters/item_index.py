"""The catalog's item vectors as shipped in a model directory (``item_ids.json``,
``item_vecs.npy``, ``category_vecs.json``).

Every catalog item gets a vector, text or not, following ``schemas.ranking.compose_item_vector``
(text part + category part, L2-normalised) so that a known item and the same item arriving new
at a worker land in the same place. Items with neither text nor category get a deterministic
item-id hash vector: unrelated to everything else, but stable across versions and machines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tokenizers import Tokenizer

from exporters.modeling import ItemEncoder, hash_unit_vector
from exporters.text import encode_texts
from schemas.ranking import compose_item_vector, item_text

# Length of an untrained category vector relative to a (unit) text vector: the category tells
# less about an item than its own text, so it shifts the text vector without replacing it.
BOOTSTRAP_CATEGORY_SCALE = 0.5

ITEM_IDS_FILE = "item_ids.json"
ITEM_VECS_FILE = "item_vecs.npy"
CATEGORY_VECS_FILE = "category_vecs.json"


@dataclass
class ItemIndex:
    item_ids: list[str]
    vecs: np.ndarray  # float32 [N, D], rows L2-normalised
    category_vecs: dict[str, np.ndarray]
    with_text: int

    def write(self, folder: Path) -> list[str]:
        folder = Path(folder)
        (folder / ITEM_IDS_FILE).write_text(json.dumps(self.item_ids))
        np.save(folder / ITEM_VECS_FILE, self.vecs.astype(np.float32))
        files = [ITEM_IDS_FILE, ITEM_VECS_FILE]
        if self.category_vecs:
            payload = {c: [round(float(x), 7) for x in v] for c, v in sorted(self.category_vecs.items())}
            (folder / CATEGORY_VECS_FILE).write_text(json.dumps(payload))
            files.append(CATEGORY_VECS_FILE)
        return files


def item_fields(item: Any) -> tuple[str, str, str | None]:
    """(item_id, text, category) of a ``schemas.models.Item``-like object."""
    text = item_text(getattr(item, "title", None), getattr(item, "description", None))
    category = getattr(item, "category", None)
    return str(item.item_id), text, (str(category) if category not in (None, "") else None)


def bootstrap_item_index(encoder: ItemEncoder, tok: Tokenizer, items: Iterable[Any]) -> ItemIndex:
    """Untuned item vectors: encoder(text) + scaled category-hash vector; id-hash when neither."""
    rows = [item_fields(it) for it in items]
    dim = encoder.dim
    texts = [t for _, t, _ in rows if t]
    text_vecs = iter(encode_texts(encoder, tok, texts)) if texts else iter(())
    categories = sorted({c for _, _, c in rows if c is not None})
    cat_vecs = {c: BOOTSTRAP_CATEGORY_SCALE * hash_unit_vector(f"category:{c}", dim) for c in categories}
    vecs = np.zeros((len(rows), dim), dtype=np.float32)
    for i, (item_id, text, cat) in enumerate(rows):
        v = compose_item_vector(next(text_vecs) if text else None, cat_vecs.get(cat) if cat else None)
        vecs[i] = v if v is not None else hash_unit_vector(f"item:{item_id}", dim)
    return ItemIndex([r[0] for r in rows], vecs, cat_vecs, with_text=len(texts))
