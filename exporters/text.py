"""Tokenisation and batch encoding of item texts (``schemas.ranking.item_text``).

The job tokenises with the very ``tokenizers.Tokenizer`` it saves into the model directory
(``tokenizer.json``), so training, export and the worker see identical token ids.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from exporters.modeling import ItemEncoder, pretrained_model_dir

PAD_ID = 0


def load_tokenizer(max_text_len: int) -> Tokenizer:
    """MiniLM's WordPiece tokenizer, truncating to ``max_text_len`` and padding to the batch's longest.

    The padding/truncation settings travel inside the saved JSON, so the worker's
    ``encode_batch`` returns exactly what the ONNX item encoder was exported and checked with.
    """
    tok = Tokenizer.from_file(str(pretrained_model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_text_len)
    tok.enable_padding(pad_id=PAD_ID, pad_token="[PAD]")
    return tok


def tokenize(tok: Tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (input_ids, attention_mask), int64 [N, T]."""
    enc = tok.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in enc], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


@torch.inference_mode()
def encode_texts(
    encoder: ItemEncoder,
    tok: Tokenizer,
    texts: Sequence[str],
    batch_size: int = 256,
    device: torch.device | None = None,
) -> np.ndarray:
    """Encode texts in length-sorted batches (little padding, so CPU time goes to real tokens).

    Returns float32 [N, D] in the order of ``texts``.
    """
    device = device or next(encoder.parameters()).device
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    was_training = encoder.training
    encoder.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = tokenize(tok, [texts[i] for i in idx])
        vec = encoder(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        out[idx] = vec.float().cpu().numpy()
    encoder.train(was_training)
    return out
