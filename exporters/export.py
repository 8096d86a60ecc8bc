"""ONNX export of the item encoder and the ranker, their runtime variants, and the parity check.

Files written (names from ``schemas.ranking.MODEL_DIR_LAYOUT``):

* ``item_encoder.onnx`` and ``ranker.onnx``: FP32, exported with dynamic axes (N, T for the
  encoder; B, L, C for the ranker), then graph-optimised offline by onnxruntime's transformer
  optimizer (LayerNorm/Gelu/bias fusions into ``com.microsoft`` ops that both the CPU and the
  CUDA provider run), so every worker skips that work at load time.
* ``ranker.fp16.onnx``: the optimised graph in FP16 with FP32 inputs/outputs kept, for the CUDA
  provider (the worker feeds the same float32 arrays to every variant).
* ``ranker.int8.onnx``: dynamic int8 quantisation of the MatMuls, for CPU; shipped only when
  its top-10 agreement with torch holds (``INT8_MIN_TOP10``) and then, in the job, its validation
  NDCG@10 on a sample (``exporters.job.int8_decision``).
* No ``item_encoder.onnx`` when the job passes no encoder (no catalog item has text).

The parity check compares each ONNX file with the torch module on held-out inputs (not the
ones used for tracing): max absolute difference of outputs, and for the ranker the mean overlap
of the top-10 lists. A version is publishable only when ``parity["ok"]`` is true.

The legacy TorchScript exporter (``dynamo=False``) is used on purpose: the dynamo exporter
needs ``onnxscript``, which the job does not otherwise depend on, and the traced graphs of
these two modules are plain (no data-dependent control flow; see ``exporters.modeling``).
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Tokenizer

from exporters.modeling import ItemEncoder, Ranker
from exporters.text import tokenize
from schemas.ranking import (
    EVENT_TYPE_IDS,
    ITEM_ENCODER_INPUTS,
    ITEM_ENCODER_OUTPUT,
    NUM_FEATURES,
    RANKER_INPUTS,
    RANKER_OUTPUT,
)

OPSET = 17
# Parity tolerances (absolute, on outputs) and minimum top-10 agreement with torch.
FP32_ATOL_SCORES = 1e-3
FP32_ATOL_VECS = 1e-4
FP32_MIN_TOP10 = 0.99
FP16_ATOL_SCORES = 5e-2
FP16_MIN_TOP10 = 0.9
INT8_MIN_TOP10 = 0.8
TOP_K = 10

ENCODER_FILE = "item_encoder.onnx"
RANKER_FILE = "ranker.onnx"
RANKER_FP16_FILE = "ranker.fp16.onnx"
RANKER_INT8_FILE = "ranker.int8.onnx"

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What ``export_models`` wrote and measured.

    ``ranker_variants`` (names of the shipped variants, for the manifest's list),
    ``variant_files`` (name -> file) and ``parity`` (per file, with an overall ``ok``) go to
    the manifest as they are.
    """

    files: list[str]
    parity: dict  # parity["item_encoder"] is None when no encoder was exported
    ranker_variants: list[str]
    variant_files: dict[str, str]
    fused_ops: dict[str, dict[str, int]]
    sizes: dict[str, int] = field(default_factory=dict)


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: Sequence[str], output: str, axes: dict) -> None:
    with warnings.catch_warnings():
        # The legacy exporter announces its own deprecation; the traced graphs are checked by parity.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=[output],
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _cpu_copy(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).to("cpu", torch.float32).eval()


def export_item_encoder(encoder: ItemEncoder, tok: Tokenizer, path: Path) -> None:
    ids, mask = tokenize(tok, ["wooden heart decoration", "a"])
    axes = {n: {0: "N", 1: "T"} for n in ITEM_ENCODER_INPUTS} | {ITEM_ENCODER_OUTPUT: {0: "N"}}
    _export(
        _cpu_copy(encoder),
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        path,
        ITEM_ENCODER_INPUTS,
        ITEM_ENCODER_OUTPUT,
        axes,
    )


def export_ranker(ranker: Ranker, path: Path) -> None:
    probe = ranker_probe_inputs(None, ranker.item_dim, shapes=[(2, 5, 7)], seed=12345)[0]
    args = tuple(torch.from_numpy(probe[n]) for n in RANKER_INPUTS)
    axes = {
        "seq_vecs": {0: "B", 1: "L"},
        "seq_types": {0: "B", 1: "L"},
        "seq_mask": {0: "B", 1: "L"},
        "cand_vecs": {0: "B", 1: "C"},
        "cand_feats": {0: "B", 1: "C"},
        RANKER_OUTPUT: {0: "B", 1: "C"},
    }
    _export(_cpu_copy(ranker), args, path, RANKER_INPUTS, RANKER_OUTPUT, axes)


def _transformer_optimizer(src: Path, num_heads: int, hidden: int):
    from onnxruntime.transformers.optimizer import optimize_model

    return optimize_model(
        str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden, opt_level=0, use_gpu=False
    )


def optimize_onnx(src: Path, dst: Path, num_heads: int, hidden: int) -> dict[str, int]:
    """Offline fusion of the FP32 graph; returns the fused-operator counts (for the manifest)."""
    model = _transformer_optimizer(src, num_heads, hidden)
    model.save_model_to_file(str(dst))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def convert_fp16(src: Path, dst: Path, num_heads: int, hidden: int) -> None:
    """FP16 weights and compute, float32 I/O (so the worker's feeds do not change per variant)."""
    model = _transformer_optimizer(src, num_heads, hidden)
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    quiet = _QuietQuantizer()
    root.addFilter(quiet)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(quiet)


class _QuietQuantizer(logging.Filter):
    """The quantizer logs per-tensor INFO lines and a static-quantisation hint on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "pre-processing before quantization" not in record.getMessage()


def ranker_probe_inputs(
    item_vecs: np.ndarray | None, dim: int, shapes: Sequence[tuple[int, int, int]], seed: int
) -> list[dict[str, np.ndarray]]:
    """Realistic ranker inputs: catalog vectors (or random unit vectors), mixed event types,
    sequences padded on either side (and one empty sequence, a new user), features in the ranges
    the worker produces."""
    rng = np.random.default_rng(seed)
    type_ids = np.array(sorted(EVENT_TYPE_IDS.values()), dtype=np.int64)

    def vecs(*shape: int) -> np.ndarray:
        if item_vecs is not None and len(item_vecs):
            return item_vecs[rng.integers(0, len(item_vecs), size=shape)].astype(np.float32)
        v = rng.standard_normal((*shape, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    out = []
    for b, l, c in shapes:
        mask = np.zeros((b, l), dtype=np.int64)
        for row in range(b):
            n = l if row == 0 else int(rng.integers(0 if row == b - 1 else 1, l + 1))
            if row % 2:
                mask[row, l - n :] = 1  # left padding
            else:
                mask[row, :n] = 1  # right padding
        feats = np.zeros((b, c, NUM_FEATURES), dtype=np.float32)
        touched = rng.random((b, c)) < 0.2
        feats[..., 0] = np.where(touched, np.log1p(rng.integers(1, 30, (b, c))), 0.0)
        feats[..., 1] = np.where(touched, np.exp(-rng.uniform(0, 365, (b, c)) / 30.0), 0.0)
        feats[..., 2] = np.log1p(rng.poisson(2.0, (b, c)) * (rng.random((b, c)) < 0.5))
        feats[..., 3] = np.log1p(rng.uniform(0, 2000, (b, c)))
        feats[..., 4] = rng.uniform(-0.2, 1.0, (b, c))
        out.append(
            {
                "seq_vecs": vecs(b, l) * mask[..., None].astype(np.float32),
                "seq_types": rng.choice(type_ids, size=(b, l)) * mask,
                "seq_mask": mask,
                "cand_vecs": vecs(b, c),
                "cand_feats": feats,
            }
        )
    return out


def _session(path: Path, provider: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=[provider])


def _top_k_agreement(a: np.ndarray, b: np.ndarray, k: int = TOP_K) -> float:
    """Mean overlap of the top-k sets of two score matrices [B, C]."""
    k = min(k, a.shape[1])
    ta = np.argsort(-a, axis=1, kind="stable")[:, :k]
    tb = np.argsort(-b, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb)]))


@torch.inference_mode()
def ranker_parity(
    ranker: Ranker, path: Path, probes: list[dict[str, np.ndarray]], provider: str = "CPUExecutionProvider"
) -> dict:
    """Max |onnx - torch| over all probe scores and the mean top-10 agreement."""
    ref_model = _cpu_copy(ranker)
    sess = _session(path, provider)
    diff, agree, rows = 0.0, [], 0
    for p in probes:
        ref = ref_model(*(torch.from_numpy(p[n]) for n in RANKER_INPUTS)).numpy()
        got = sess.run([RANKER_OUTPUT], p)[0]
        if got.shape != ref.shape or not np.isfinite(got).all():
            return {
                "provider": provider,
                "max_abs_diff": float("inf"),
                "top10_agreement": 0.0,
                "rows": rows,
                "error": "shape or NaN",
            }
        diff = max(diff, float(np.abs(got - ref).max()))
        agree.append(_top_k_agreement(got, ref) * len(ref))
        rows += len(ref)
    return {"provider": provider, "max_abs_diff": diff, "top10_agreement": sum(agree) / rows, "rows": rows}


@torch.inference_mode()
def encoder_parity(encoder: ItemEncoder, path: Path, tok: Tokenizer, texts: Sequence[str]) -> dict:
    """Max |onnx - torch| of item vectors for the texts, in batches of mixed lengths."""
    ref_model = _cpu_copy(encoder)
    sess = _session(path, "CPUExecutionProvider")
    diff, n = 0.0, 0
    for start in range(0, len(texts), 16):
        ids, mask = tokenize(tok, texts[start : start + 16])
        ref = ref_model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        got = sess.run([ITEM_ENCODER_OUTPUT], {"input_ids": ids, "attention_mask": mask})[0]
        diff = max(diff, float(np.abs(got - ref).max()))
        n += len(ids)
    return {"provider": "CPUExecutionProvider", "max_abs_diff": diff, "texts": n}


def default_probe_texts() -> list[str]:
    return [
        "WHITE HANGING HEART T-LIGHT HOLDER",
        "jumbo bag red retrospot",
        "Toy Story (1995)",
        "",
        "set of 3 cake tins pantry design with a rather long description that goes on and on " * 3,
        "Ø unicode — text",
    ]


def export_models(
    encoder: ItemEncoder | None,
    ranker: Ranker,
    tok: Tokenizer,
    out_dir: Path,
    *,
    max_seq_len: int,
    item_vecs: np.ndarray | None = None,
    probe_texts: Sequence[str] | None = None,
    int8: bool = True,
    fp16: bool = True,
) -> ExportResult:
    """Export both modules with their variants into ``out_dir`` and check parity.

    ``encoder`` None: the catalog has no text, so no item encoder is exported or checked (the
    worker then vectors new items by category or id hash and has no search-query encoder).
    The raw traced graphs are intermediate: only the optimised FP32 files and the variants that
    passed their checks stay in ``out_dir``.
    """
    out_dir = Path(out_dir)
    rk_cfg = ranker.bert.config
    raw_rk = out_dir / "ranker.raw.onnx"
    export_ranker(ranker, raw_rk)
    fused = {RANKER_FILE: optimize_onnx(raw_rk, out_dir / RANKER_FILE, rk_cfg.num_attention_heads, rk_cfg.hidden_size)}
    parity: dict = {"item_encoder": None}
    if encoder is not None:
        enc_cfg, raw_enc = encoder.bert.config, out_dir / "item_encoder.raw.onnx"
        export_item_encoder(encoder, tok, raw_enc)
        fused[ENCODER_FILE] = optimize_onnx(
            raw_enc, out_dir / ENCODER_FILE, enc_cfg.num_attention_heads, enc_cfg.hidden_size
        )
        raw_enc.unlink()
        texts = list(probe_texts or default_probe_texts())
        check = encoder_parity(encoder, out_dir / ENCODER_FILE, tok, texts)
        parity["item_encoder"] = check | {"atol": FP32_ATOL_VECS, "ok": check["max_abs_diff"] <= FP32_ATOL_VECS}
    probes = ranker_probe_inputs(
        item_vecs,
        ranker.item_dim,
        shapes=[(1, 1, 1), (3, 7, 50), (8, max_seq_len, 200), (16, max_seq_len, 500)],
        seed=2024,
    )
    parity["ranker"] = ranker_parity(ranker, out_dir / RANKER_FILE, probes) | {
        "atol": FP32_ATOL_SCORES,
        "min_top10_agreement": FP32_MIN_TOP10,
    }
    parity["ranker"]["ok"] = (
        parity["ranker"]["max_abs_diff"] <= FP32_ATOL_SCORES and parity["ranker"]["top10_agreement"] >= FP32_MIN_TOP10
    )
    variant_files = {"fp32": RANKER_FILE}

    if fp16:
        # Checked on CPU always (ORT runs FP16 graphs there too) and on CUDA when present.
        convert_fp16(raw_rk, out_dir / RANKER_FP16_FILE, rk_cfg.num_attention_heads, rk_cfg.hidden_size)
        providers = [p for p in ("CPUExecutionProvider", "CUDAExecutionProvider") if p in ort.get_available_providers()]
        checks = [ranker_parity(ranker, out_dir / RANKER_FP16_FILE, probes, p) for p in providers]
        ok = all(c["max_abs_diff"] <= FP16_ATOL_SCORES and c["top10_agreement"] >= FP16_MIN_TOP10 for c in checks)
        parity["ranker_fp16"] = {
            "checks": checks,
            "atol": FP16_ATOL_SCORES,
            "min_top10_agreement": FP16_MIN_TOP10,
            "ok": ok,
        }
        if ok:
            variant_files["fp16"] = RANKER_FP16_FILE
        else:
            (out_dir / RANKER_FP16_FILE).unlink()
    if int8:
        quantize_int8(raw_rk, out_dir / RANKER_INT8_FILE)
        check = ranker_parity(ranker, out_dir / RANKER_INT8_FILE, probes)
        ok = check["top10_agreement"] >= INT8_MIN_TOP10
        parity["ranker_int8"] = check | {"min_top10_agreement": INT8_MIN_TOP10, "ok": ok}
        if ok:
            variant_files["int8"] = RANKER_INT8_FILE
        else:
            (out_dir / RANKER_INT8_FILE).unlink()
    raw_rk.unlink()
    # Only the FP32 files gate publication; a failed optional variant is simply not shipped.
    parity["ok"] = (parity["item_encoder"] is None or parity["item_encoder"]["ok"]) and parity["ranker"]["ok"]
    files = [ENCODER_FILE] * (encoder is not None) + list(variant_files.values())
    sizes = {f: os.path.getsize(out_dir / f) for f in files}
    log.info("exported %s; parity ok=%s", sizes, parity["ok"])
    return ExportResult(
        files=files,
        parity=parity,
        ranker_variants=list(variant_files),
        variant_files=variant_files,
        fused_ops=fused,
        sizes=sizes,
    )
