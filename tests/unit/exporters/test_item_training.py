"""The item-vector stage's cached text states: length-bucketed batches give the encoder's vectors."""

from __future__ import annotations

import numpy as np
import torch

from exporters.bootstrap import build_models
from exporters.item_training import CachedText
from exporters.text import tokenize


def test_cached_text_in_length_buckets_encodes_like_the_encoder() -> None:
    tok, encoder, _ = build_models(True, 1, 32)
    texts = [
        "red gift",
        "",
        "a much longer description of a golden candle holder with lights and many more words",
        "blue",
        "x y z w v u",
    ] * 70  # > 256 texts: several batches of different lengths
    cache = CachedText(encoder, tok, texts, n_frozen=1, device=torch.device("cpu"))
    got = cache.encode_all(encoder, len(texts))
    rows = [i for i, t in enumerate(texts) if t]
    ids, mask = tokenize(tok, [texts[i] for i in rows])
    with torch.no_grad():
        want = encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got[rows], want, atol=1e-5)
    assert not got[[i for i, t in enumerate(texts) if not t]].any()  # no text: zero vector
