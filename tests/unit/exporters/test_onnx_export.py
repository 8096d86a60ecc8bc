"""ONNX export: dynamic shapes, parity with torch, variants, and the worker's view of a model dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from exporters import export
from exporters.modeling import BOOTSTRAP_FEATURE_WEIGHTS
from schemas.ranking import FEATURE_NAMES, ITEM_ENCODER_OUTPUT, RANKER_INPUTS, RANKER_OUTPUT


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return session.run([RANKER_OUTPUT], {n: feeds[n] for n in RANKER_INPUTS})[0]


@pytest.fixture()
def exported(tiny_models, tmp_path: Path):
    tok, encoder, ranker = tiny_models
    result = export.export_models(encoder, ranker, tok, tmp_path, max_seq_len=9)
    return tok, encoder, ranker, tmp_path, result


def test_ranker_dynamic_shapes_and_parity(exported) -> None:
    _, _, ranker, folder, result = exported
    assert result.parity["ok"], result.parity
    sess = ort.InferenceSession(str(folder / export.RANKER_FILE), providers=["CPUExecutionProvider"])
    shapes = [(1, 1, 1), (2, 3, 5), (5, 20, 64), (3, 9, 300)]
    for probe in export.ranker_probe_inputs(None, ranker.item_dim, shapes, seed=99):
        got = _run(sess, probe)
        b, c = probe["cand_feats"].shape[:2]
        assert got.shape == (b, c) and got.dtype == np.float32
        with torch.no_grad():
            ref = ranker(*(torch.from_numpy(probe[n]) for n in RANKER_INPUTS)).numpy()
        np.testing.assert_allclose(got, ref, atol=export.FP32_ATOL_SCORES, rtol=0)


def test_item_encoder_dynamic_shapes_and_parity(exported) -> None:
    tok, encoder, _, folder, _ = exported
    sess = ort.InferenceSession(str(folder / export.ENCODER_FILE), providers=["CPUExecutionProvider"])
    for texts in (["a"], ["short", "a much longer piece of item text " * 5, ""]):
        enc = tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        got = sess.run([ITEM_ENCODER_OUTPUT], {"input_ids": ids, "attention_mask": mask})[0]
        with torch.no_grad():
            ref = encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        assert got.shape == (len(texts), encoder.dim)
        np.testing.assert_allclose(got, ref, atol=export.FP32_ATOL_VECS, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_padding_side_and_empty_sequence(exported) -> None:
    """Positions count back from the newest item, so left and right padding score the same;
    a new user (no real position) still gets finite scores."""
    _, _, ranker, folder, _ = exported
    sess = ort.InferenceSession(str(folder / export.RANKER_FILE), providers=["CPUExecutionProvider"])
    probe = export.ranker_probe_inputs(None, ranker.item_dim, [(1, 4, 30)], seed=5)[0]
    right = {k: v.copy() for k, v in probe.items()}
    right["seq_mask"][:] = [[1, 1, 1, 0]]
    right["seq_vecs"][:, 3] = 0
    right["seq_types"][:] = [[5, 1, 3, 0]]
    left = {k: v.copy() for k, v in right.items()}
    for key in ("seq_vecs", "seq_types", "seq_mask"):
        left[key] = np.roll(right[key], 1, axis=1)
    np.testing.assert_allclose(_run(sess, left), _run(sess, right), atol=1e-5)
    assert not np.allclose(_run(sess, right), _run(sess, {**right, "seq_types": right["seq_types"][:, ::-1].copy()}))
    empty = {k: v.copy() for k, v in right.items()}
    empty["seq_mask"][:] = 0
    empty["seq_types"][:] = 0
    empty["seq_vecs"][:] = 0
    assert np.isfinite(_run(sess, empty)).all()


def test_variants_are_checked_and_listed(exported) -> None:
    _, _, _, folder, result = exported
    assert result.ranker_variants[0] == "fp32"
    for name, file in result.variant_files.items():
        assert (folder / file).is_file(), name
    assert result.parity["ranker_fp16"]["ok"] == ("fp16" in result.variant_files)
    assert result.parity["ranker_int8"]["ok"] == ("int8" in result.variant_files)
    assert not list(folder.glob("*.raw.onnx")), "intermediate graphs must not be shipped"


def test_failed_int8_variant_is_not_shipped(tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "INT8_MIN_TOP10", 1.01)  # unreachable
    tok, encoder, ranker = tiny_models
    result = export.export_models(encoder, ranker, tok, tmp_path, max_seq_len=6, fp16=False)
    assert "int8" not in result.ranker_variants and not (tmp_path / export.RANKER_INT8_FILE).exists()
    assert result.parity["ranker_int8"]["ok"] is False
    assert result.parity["ok"], "an optional variant does not block the version"


def test_bootstrap_scores_follow_documented_formula(tiny_version: Path) -> None:
    """Untuned scores = cos(type-weighted mean of sequence vectors, cand) + linear features."""
    manifest = json.loads((tiny_version / "manifest.json").read_text())
    weights = np.array([BOOTSTRAP_FEATURE_WEIGHTS[n] for n in manifest["features"]], dtype=np.float32)
    assert manifest["features"] == list(FEATURE_NAMES)
    vecs = np.load(tiny_version / "item_vecs.npy")
    sess = ort.InferenceSession(str(tiny_version / "ranker.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    seq = vecs[[0, 1, 2]][None]
    types = np.array([[5, 1, 6]], dtype=np.int64)  # purchase (1.0), view (0.2), cancel (0 weight)
    feeds = {
        "seq_vecs": seq.astype(np.float32),
        "seq_types": types,
        "seq_mask": np.ones((1, 3), dtype=np.int64),
        "cand_vecs": vecs[None, 3:20],
        "cand_feats": rng.random((1, 17, len(weights))).astype(np.float32),
    }
    user = (1.0 * seq[0, 0] + 0.2 * seq[0, 1]) / 1.2
    user /= np.linalg.norm(user)
    expected = vecs[3:20] @ user + feeds["cand_feats"][0] @ weights
    np.testing.assert_allclose(_run(sess, feeds)[0], expected, atol=1e-4)


def test_model_dir_from_the_workers_side(tiny_version: Path) -> None:
    """With only onnxruntime + tokenizers: the tokenizer pads/truncates by itself and the ONNX
    encoder reproduces the shipped vectors of items that have text."""
    manifest = json.loads((tiny_version / "manifest.json").read_text())
    tok = Tokenizer.from_file(str(tiny_version / "tokenizer.json"))
    enc = tok.encode_batch(["WHITE METAL LANTERN", "word " * 200])
    assert len(enc[0].ids) == len(enc[1].ids) == manifest["max_text_len"]
    ids = json.loads((tiny_version / "item_ids.json").read_text())
    vecs = np.load(tiny_version / "item_vecs.npy")
    assert vecs.shape == (len(ids), manifest["dim"]) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sess = ort.InferenceSession(str(tiny_version / "item_encoder.onnx"), providers=["CPUExecutionProvider"])
    e = tok.encode_batch(["WHITE METAL LANTERN"])
    got = sess.run(None, {"input_ids": np.array([e[0].ids]), "attention_mask": np.array([e[0].attention_mask])})[0][0]
    np.testing.assert_allclose(got, vecs[ids.index("71053")], atol=1e-4)
    # Text-less items of one category share the category vector; an item with nothing has its own.
    np.testing.assert_allclose(vecs[ids.index("4001")], vecs[ids.index("4002")])
    assert abs(float(vecs[ids.index("4003")] @ vecs[ids.index("4001")])) < 0.9
    cats = json.loads((tiny_version / "category_vecs.json").read_text())
    assert "2520377" in cats and len(cats["2520377"]) == manifest["dim"]
