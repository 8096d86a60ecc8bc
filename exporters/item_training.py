"""Item vectors fine-tuned on behaviour: items bought or viewed together come close.

An item's vector is ``normalise(text_vec + id_vec + category_vec)`` (``ItemTower``), the rule
of ``schemas.ranking.compose_item_vector`` plus a learned per-item part:

* ``text_vec`` — the item encoder (MiniLM) on the item's text; its top ``text_layers`` layers are
  fine-tuned, the frozen bottom runs once and its token states are cached, so a step costs one
  or two layers instead of six;
* ``id_vec`` — a learned vector per catalog item (starts at zero, or at an id-hash vector for
  items with neither text nor category, so that every item has a direction from the start);
* ``category_vec`` — a learned vector per category (starts at the bootstrap's scaled
  category-hash vector); it is what a new text-less item of a known category gets.

Objective: symmetric InfoNCE over co-visitation pairs (the same pairs as the ranker's
``log_covis`` feature, training events only), in-batch negatives, repeated items masked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from exporters.item_index import BOOTSTRAP_CATEGORY_SCALE
from exporters.modeling import ItemEncoder, hash_unit_vector
from exporters.text import tokenize

log = logging.getLogger(__name__)


class ItemTower(nn.Module):
    """All catalog vectors at once: [N, D] = normalise(text + id + category)."""

    def __init__(self, text_vecs: np.ndarray, categories: list[str | None], item_ids: list[str]):
        super().__init__()
        n, dim = text_vecs.shape
        self.register_buffer("text", torch.from_numpy(text_vecs.astype(np.float32)))
        self.category_names = sorted({c for c in categories if c is not None})
        cat_index = {c: i for i, c in enumerate(self.category_names)}
        # Row 0 of cat_emb is "no category" and stays zero.
        self.register_buffer(
            "cat_of_item", torch.tensor([cat_index[c] + 1 if c is not None else 0 for c in categories])
        )
        cat_init = np.zeros((len(self.category_names) + 1, dim), dtype=np.float32)
        for c, i in cat_index.items():
            cat_init[i + 1] = BOOTSTRAP_CATEGORY_SCALE * hash_unit_vector(f"category:{c}", dim)
        self.cat_emb = nn.Parameter(torch.from_numpy(cat_init))
        id_init = np.zeros((n, dim), dtype=np.float32)
        has_text = np.linalg.norm(text_vecs, axis=1) > 0
        for i in np.flatnonzero(~has_text & (np.array([c is None for c in categories], dtype=bool))):
            id_init[i] = hash_unit_vector(f"item:{item_ids[i]}", dim)
        self.id_emb = nn.Parameter(torch.from_numpy(id_init))

    def forward(self, rows: torch.Tensor | None = None, text: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of ``rows`` (all items when None); ``text`` overrides the cached text vectors."""
        rows = torch.arange(self.text.shape[0], device=self.text.device) if rows is None else rows
        t = self.text[rows] if text is None else text
        cats = self.cat_of_item[rows]
        cat = self.cat_emb[cats] * (cats > 0).unsqueeze(1).to(t.dtype)
        return F.normalize(t + self.id_emb[rows] + cat, dim=-1)

    def category_vectors(self) -> dict[str, np.ndarray]:
        w = self.cat_emb.detach().cpu().numpy()
        return {c: w[i + 1] for i, c in enumerate(self.category_names)}


@dataclass
class ItemTrainConfig:
    text_layers: int = 1  # top encoder layers fine-tuned (0: text vectors frozen)
    steps: int = 60
    batch_pairs: int = 128
    lr_text: float = 3e-5
    lr_vectors: float = 5e-3
    temperature: float = 0.05
    seed: int = 0


class CachedText:
    """Token states of every text item after the frozen bottom of the encoder.

    Texts run in batches of similar length, each cut to its longest text (catalog texts are short
    next to ``max_text_len``: padding every batch to the longest text of the catalog cost ~3x)."""

    def __init__(self, encoder: ItemEncoder, tok: Tokenizer, texts: list[str], n_frozen: int, device: torch.device):
        self.rows = np.array([i for i, t in enumerate(texts) if t], dtype=np.int64)
        self.n_frozen = n_frozen
        ids, mask = (
            tokenize(tok, [texts[i] for i in self.rows]) if len(self.rows) else (np.zeros((0, 1), np.int64),) * 2
        )
        self.ids = torch.from_numpy(ids).to(device)
        self.mask = torch.from_numpy(mask).to(device)
        self.lengths = self.mask.sum(1)
        self.by_length = torch.argsort(self.lengths, stable=True)
        self.states = torch.zeros(len(self.rows), max(self.ids.shape[1], 1), encoder.dim, device=device)
        with torch.inference_mode():
            for s in range(0, len(self.rows), 256):
                b = self.by_length[s : s + 256]
                t = int(self.lengths[b].max())
                self.states[b, :t] = encoder.prefix(self.ids[b, :t], self.mask[b, :t], n_frozen)
        self.slot = -np.ones(len(texts), dtype=np.int64)
        self.slot[self.rows] = np.arange(len(self.rows))

    def encode(self, encoder: ItemEncoder, slots: torch.Tensor) -> torch.Tensor:
        t = int(self.lengths[slots].max()) if len(slots) else 1
        return encoder.head(self.states[slots, :t], self.mask[slots, :t], self.n_frozen)

    def encode_all(self, encoder: ItemEncoder, n_items: int) -> np.ndarray:
        out = np.zeros((n_items, encoder.dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(self.rows), 256):
                slots = self.by_length[s : s + 256]
                out[self.rows[slots.cpu().numpy()]] = self.encode(encoder, slots).float().cpu().numpy()
        return out


def train_item_vectors(
    encoder: ItemEncoder,
    tok: Tokenizer,
    texts: list[str],
    categories: list[str | None],
    item_ids: list[str],
    pairs: tuple[np.ndarray, np.ndarray],
    cfg: ItemTrainConfig,
    device: torch.device,
) -> tuple[ItemTower, list[float]]:
    """Fine-tune the encoder's top layers and the id/category vectors on co-visitation pairs.

    Returns the tower (its ``text`` buffer holds the fine-tuned encoder's text vectors) and the
    loss per step.
    """
    n_layers = encoder.bert.config.num_hidden_layers
    text_layers = min(cfg.text_layers, n_layers)
    cache = CachedText(encoder, tok, texts, n_layers - text_layers, device)
    tower = ItemTower(cache.encode_all(encoder, len(texts)), categories, item_ids).to(device)
    src, dst = pairs
    losses: list[float] = []
    if len(src) == 0 or cfg.steps == 0:
        return tower, losses
    params = [{"params": tower.parameters(), "lr": cfg.lr_vectors}]
    top = [p for layer in encoder.bert.encoder.layer[n_layers - text_layers :] for p in layer.parameters()]
    if text_layers and len(cache.rows):
        params.append({"params": top, "lr": cfg.lr_text})
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    encoder.train()
    slot_of = torch.from_numpy(cache.slot).to(device)
    for _ in tqdm(range(cfg.steps), desc="item vectors", leave=False, mininterval=5, disable=None):
        pick = rng.integers(0, len(src), size=min(cfg.batch_pairs, len(src)))
        a, b = torch.from_numpy(src[pick]).to(device), torch.from_numpy(dst[pick]).to(device)
        rows, inv = torch.unique(torch.cat([a, b]), return_inverse=True)
        text = torch.zeros(len(rows), encoder.dim, device=device)
        slots = slot_of[rows]
        has = slots >= 0
        if text_layers and has.any():
            text[has] = cache.encode(encoder, slots[has])
        else:
            text = tower.text[rows]
        vecs = tower(rows, text=text)
        va, vb = vecs[inv[: len(a)]], vecs[inv[len(a) :]]
        logits = va @ vb.T / cfg.temperature
        same = (a[:, None] == a[None, :]) | (b[:, None] == b[None, :])
        logits = logits.masked_fill(same & ~torch.eye(len(a), dtype=torch.bool, device=device), float("-inf"))
        target = torch.arange(len(a), device=device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    encoder.eval()
    with torch.no_grad():
        tower.text.copy_(torch.from_numpy(cache.encode_all(encoder, len(texts))).to(device))
    log.info("item vectors: %d steps, loss %.3f -> %.3f", cfg.steps, losses[0], np.mean(losses[-10:]))
    return tower, losses
