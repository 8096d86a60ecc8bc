"""Model versions on the worker side: find, verify, load and smoke-test a version folder.

The job (``exporters``) writes versions; the worker only reads them, with onnxruntime and the
``tokenizers`` library (no torch in a worker image). A version is refused — with a reason that is
logged and counted — when its manifest is missing or malformed, a checksum differs, its features
or event-type ids differ from what this worker computes, or the smoke inference fails or gives
non-finite scores. Refusal never disturbs the version being served.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from schemas.serving import NEIGHBOUR_FILES, NEIGHBOURS_KEY, ItemNeighbours, ListParams
from schemas.ranking import (
    ITEM_ENCODER_OUTPUT,
    NUM_FEATURES,
    RANKER_OUTPUT,
    check_manifest_features,
)

log = logging.getLogger(__name__)


class ModelRefused(Exception):
    """A model version failed verification; ``str()`` says why."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def latest_version_dir(model_root: Path) -> Path | None:
    latest = model_root / "LATEST"
    if not latest.exists():
        return None
    name = latest.read_text().strip()
    return model_root / name if name else None


def auto_threads() -> int:
    """``STREAMREC_ORT_THREADS=0``: the cores this process may use beyond the event loop's, 1 to 4
    (measured on 2 cores: 1 thread 1,150 users/s, 2 threads 970 with spinning off, 510 with it)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores - 1, 4))


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        log.warning("STREAMREC_DEVICE=cuda but onnxruntime has no CUDAExecutionProvider (has %s); using CPU", available)
    return ["CPUExecutionProvider"]


@dataclass
class ModelBundle:
    """One verified, loaded model version."""

    version: str
    path: Path
    manifest: dict
    dim: int
    max_seq_len: int
    max_text_len: int
    tokenizer: object
    encoder: object | None  # onnxruntime.InferenceSession; None: a version without text (no item encoder)
    ranker: object  # onnxruntime.InferenceSession
    ranker_file: str
    provider: str
    item_ids: list[str]
    item_vecs: np.ndarray
    category_vecs: dict[str, np.ndarray]
    neighbours: ItemNeighbours | None = None  # the ``knn`` source's lists (manifest NEIGHBOURS_KEY), if shipped

    @classmethod
    def load(cls, path: Path, *, device: str = "auto", variant: str = "auto", threads: int = 0,
             manifest_sha256: str | None = None) -> "ModelBundle":
        """Verify and load the version at ``path``; ``manifest_sha256`` (from a ``model-updates``
        message) must then match the manifest file, so a folder rewritten after the announcement
        is refused."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise ModelRefused(f"{path}: no manifest.json")
        if manifest_sha256 is not None and sha256_file(manifest_path) != manifest_sha256:
            raise ModelRefused(f"{path}: manifest.json does not match the announced manifest_sha256")
        try:
            manifest = orjson.loads(manifest_path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ModelRefused(f"{path}: manifest.json is not valid JSON ({exc})") from None
        for key in ("version", "dim", "max_seq_len", "max_text_len", "files", "features"):
            if key not in manifest:
                raise ModelRefused(f"{path}: manifest.json lacks {key!r}")
        reason = check_manifest_features(manifest)
        if reason:
            raise ModelRefused(f"{path}: {reason}")
        files: dict = manifest["files"]
        for name, meta in files.items():
            f = path / name
            if not f.exists():
                raise ModelRefused(f"{path}: {name} listed in the manifest is missing")
            if f.stat().st_size != meta.get("bytes", f.stat().st_size):
                raise ModelRefused(f"{path}: {name} has {f.stat().st_size} bytes, manifest says {meta['bytes']}")
            digest = sha256_file(f)
            if digest != meta["sha256"]:
                raise ModelRefused(f"{path}: checksum mismatch for {name}: {digest[:12]}… != {meta['sha256'][:12]}…")
        # "item_encoder": null in the manifest = the catalog had no text, so the version has no encoder
        encoder_file = manifest.get("item_encoder", "item_encoder.onnx")
        for required in (encoder_file, "ranker.onnx", "tokenizer.json", "item_ids.json", "item_vecs.npy"):
            if required is not None and required not in files:
                raise ModelRefused(f"{path}: manifest does not list {required}")

        providers = providers_for(device)
        on_cuda = providers[0] == "CUDAExecutionProvider"
        ranker_file = _pick_ranker_file(files, variant, on_cuda)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or auto_threads()
        opts.inter_op_num_threads = 1
        # the pool shares the cores with the event loop: a spinning thread would take its CPU
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            encoder = None if encoder_file is None else ort.InferenceSession(str(path / encoder_file), opts, providers=providers)
            ranker = ort.InferenceSession(str(path / ranker_file), opts, providers=providers)
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # onnxruntime raises several unrelated types for bad files
            raise ModelRefused(f"{path}: cannot load: {type(exc).__name__}: {exc}") from None
        max_text_len = int(manifest["max_text_len"])
        tokenizer.enable_truncation(max_text_len)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        item_ids = orjson.loads((path / "item_ids.json").read_bytes())
        item_vecs = np.load(path / "item_vecs.npy").astype(np.float32, copy=False)
        dim = int(manifest["dim"])
        if item_vecs.ndim != 2 or item_vecs.shape != (len(item_ids), dim):
            raise ModelRefused(f"{path}: item_vecs.npy shape {item_vecs.shape} != ({len(item_ids)}, {dim})")
        cats = {}
        if (path / "category_vecs.json").exists():
            cats = {k: np.asarray(v, dtype=np.float32) for k, v in orjson.loads((path / "category_vecs.json").read_bytes()).items()}
        try:
            ListParams.from_manifest(manifest, 1)  # a stacked list score over features this code computes
        except ValueError as exc:
            raise ModelRefused(f"{path}: {exc}") from None
        neighbours = None
        if manifest.get(NEIGHBOURS_KEY):
            names = manifest[NEIGHBOURS_KEY].get("files", list(NEIGHBOUR_FILES))
            for name in names:
                if name not in files:
                    raise ModelRefused(f"{path}: manifest does not list {name}")
            try:
                neighbours = ItemNeighbours(np.load(path / names[0]).astype(np.int32, copy=False),
                                            np.load(path / names[1]).astype(np.float32, copy=False))
            except ValueError as exc:
                raise ModelRefused(f"{path}: item neighbours: {exc}") from None
            if len(neighbours.rows) > len(item_ids) or (neighbours.rows.size and int(neighbours.rows.max()) >= len(item_ids)):
                raise ModelRefused(f"{path}: item neighbours point outside the {len(item_ids)} catalog items")
        bundle = cls(
            version=str(manifest["version"]), path=path, manifest=manifest, dim=dim,
            max_seq_len=int(manifest["max_seq_len"]), max_text_len=max_text_len, tokenizer=tokenizer,
            encoder=encoder, ranker=ranker, ranker_file=ranker_file, provider=providers[0],
            item_ids=list(item_ids), item_vecs=item_vecs, category_vecs=cats, neighbours=neighbours,
        )
        bundle.smoke_test()
        return bundle

    # ---- inference ------------------------------------------------------------------------
    def encode_texts(self, texts: list[str]) -> np.ndarray | None:
        """Item or query text -> L2-normalised vectors [N, dim] (the same encoder for both);
        None when the version has no item encoder (its catalog had no text)."""
        if self.encoder is None:
            return None
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        enc = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        (vecs,) = self.encoder.run([ITEM_ENCODER_OUTPUT], {"input_ids": ids, "attention_mask": mask})
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def score(self, seq_vecs, seq_types, seq_mask, cand_vecs, cand_feats) -> np.ndarray:
        feeds = {"seq_vecs": seq_vecs, "seq_types": seq_types, "seq_mask": seq_mask,
                 "cand_vecs": cand_vecs, "cand_feats": cand_feats}
        if self.provider == "CUDAExecutionProvider":
            return self.score_bound(feeds)
        (scores,) = self.ranker.run([RANKER_OUTPUT], feeds)
        return scores

    def score_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The ranker with I/O binding (the CUDA path): each input is copied to the device once
        and the output is allocated there by onnxruntime, then copied back; no per-run
        re-allocation of device buffers by the generic ``run``. Works on CPU too (tested there)."""
        binding = self.ranker.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        binding.bind_output(RANKER_OUTPUT)
        self.ranker.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def smoke_test(self) -> None:
        """Run both models on a small fixed input; refuse on error, wrong shape or non-finite output."""
        try:
            vecs = self.encode_texts(["white metal lantern", ""])
            if vecs is not None and (vecs.shape != (2, self.dim) or not np.isfinite(vecs).all()):
                raise ModelRefused(f"{self.path}: item encoder smoke test gave shape {vecs.shape} or non-finite values")
            rng = np.random.default_rng(0)
            b, l, c = 2, 3, 5
            scores = self.score(
                rng.standard_normal((b, l, self.dim)).astype(np.float32),
                np.ones((b, l), dtype=np.int64),
                np.ones((b, l), dtype=np.int64),
                rng.standard_normal((b, c, self.dim)).astype(np.float32),
                rng.standard_normal((b, c, NUM_FEATURES)).astype(np.float32),
            )
        except ModelRefused:
            raise
        except Exception as exc:
            raise ModelRefused(f"{self.path}: smoke inference failed: {type(exc).__name__}: {exc}") from None
        if scores.shape != (b, c) or not np.isfinite(scores).all():
            raise ModelRefused(f"{self.path}: ranker smoke test gave shape {scores.shape} or non-finite scores")


def _pick_ranker_file(files: dict, variant: str, on_cuda: bool) -> str:
    names = {"fp32": "ranker.onnx", "fp16": "ranker.fp16.onnx", "int8": "ranker.int8.onnx"}
    if variant != "auto":
        if names[variant] not in files:
            raise ModelRefused(f"STREAMREC_RANKER_VARIANT={variant} but the version has no {names[variant]}")
        return names[variant]
    if on_cuda and names["fp16"] in files:
        return names["fp16"]
    if not on_cuda and names["int8"] in files:
        return names["int8"]
    return names["fp32"]


