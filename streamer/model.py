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

from schemas.ranking import (
    ITEM_ENCODER_OUTPUT,
    NUM_FEATURES,
    RANKER_OUTPUT,
    check_manifest_features,
)
from schemas.serving import NEIGHBOUR_FILES, NEIGHBOURS_KEY, ItemNeighbours, ListParams

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
    def load(
        cls,
        path: Path,
        *,
        device: str = "auto",
        variant: str = "auto",
        threads: int = 0,
        manifest_sha256: str | None = None,
    ) -> ModelBundle:
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
            encoder = (
                None
                if encoder_file is None
                else ort.InferenceSession(str(path / encoder_file), opts, providers=providers)
            )
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
            cats = {
                k: np.asarray(v, dtype=np.float32)
                for k, v in orjson.loads((path / "category_vecs.json").read_bytes()).items()
            }
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
                neighbours = ItemNeighbours(
                    np.load(path / names[0]).astype(np.int32, copy=False),
                    np.load(path / names[1]).astype(np.float32, copy=False),
                )
            except ValueError as exc:
                raise ModelRefused(f"{path}: item neighbours: {exc}") from None
            if len(neighbours.rows) > len(item_ids) or (
                neighbours.rows.size and int(neighbours.rows.max()) >= len(item_ids)
            ):
                raise ModelRefused(f"{path}: item neighbours point outside the {len(item_ids)} catalog items")
        bundle = cls(
            version=str(manifest["version"]),
            path=path,
            manifest=manifest,
            dim=dim,
            max_seq_len=int(manifest["max_seq_len"]),
            max_text_len=max_text_len,
            tokenizer=tokenizer,
            encoder=encoder,
            ranker=ranker,
            ranker_file=ranker_file,
            provider=providers[0],
            item_ids=list(item_ids),
            item_vecs=item_vecs,
            category_vecs=cats,
            neighbours=neighbours,
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
        feeds = {
            "seq_vecs": seq_vecs,
            "seq_types": seq_types,
            "seq_mask": seq_mask,
            "cand_vecs": cand_vecs,
            "cand_feats": cand_feats,
        }
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


# ---- several versions in one worker (the A/B split's ranker@<version> arms) ---------------------
def cached_query_vectors(bundle: ModelBundle, cache, queries: list[str], size: int = 4096) -> dict[str, np.ndarray]:
    """Encoded search queries with ``bundle``'s encoder, one call for the ones not in ``cache``
    (an ``OrderedDict`` used as LRU, one per version). Empty for a version without an encoder."""
    if bundle.encoder is None:
        return {}
    missing = list(dict.fromkeys(q for q in queries if q not in cache))
    if missing:
        for q, v in zip(missing, bundle.encode_texts(missing)):
            cache[q] = v
        while len(cache) > size:
            cache.popitem(last=False)
    out = {}
    for q in queries:
        cache.move_to_end(q)
        out[q] = cache[q]
    return out


class AlignedIndex:
    """Another version's vector space over the serving item index's items, row for row.

    Everything but the vectors (ids, rows, titles, availability, popularity, trending) is the
    base index's, read through, so co-visitation and recent counts (kept by row) and catalog
    updates hold for every version. The vectors and the HNSW graph are this version's: its own
    item vectors for its catalog, else its encoder on the item's text (plus its category
    vector), else its category vector, else the id-hash placeholder. Rows the base index gained
    since are added by ``sync`` (cheap when nothing is new); ``refresh`` recomputes rows whose
    catalog record changed.
    """

    def __init__(self, base, bundle: ModelBundle) -> None:
        import hnswlib

        self.base = base
        self.bundle = bundle
        self.dim = bundle.dim
        self._own = {iid: k for k, iid in enumerate(bundle.item_ids)}
        self.capacity = max(1024, base.capacity)
        self.vecs = np.zeros((self.capacity, self.dim), dtype=np.float32)
        self.ann = hnswlib.Index(space="ip", dim=self.dim)
        self.ann.init_index(max_elements=self.capacity, ef_construction=100, M=16, allow_replace_deleted=False)
        self.ann.set_ef(64)
        self.synced = 0
        self.sync()
        self.neighbours = self._own_neighbours()

    def _own_neighbours(self):
        """This version's item-kNN lists re-indexed by the base index's rows (None when it ships
        none): the ``knn`` source of its arm reads its own neighbours, not production's. Items of
        its catalog the base index lacks drop out of the lists."""
        from schemas.serving import ItemNeighbours

        nb = self.bundle.neighbours
        if nb is None:
            return None
        to_base = np.array([self.base.pos.get(iid, -1) for iid in self.bundle.item_ids], dtype=np.int64)
        n = min(len(to_base), len(nb.rows))
        mapped = np.where(nb.rows[:n] >= 0, to_base[np.clip(nb.rows[:n], 0, None)], -1)
        sims = np.where(mapped >= 0, nb.sims[:n], 0).astype(np.float32)
        rows = np.full((len(self.base), nb.rows.shape[1]), -1, dtype=np.int32)
        out_sims = np.zeros(rows.shape, dtype=np.float32)
        have = to_base[:n] >= 0
        rows[to_base[:n][have]] = mapped[have]
        out_sims[to_base[:n][have]] = sims[have]
        # a row's neighbours most similar first, as ``ItemNeighbours`` expects (dropped ones last)
        order = np.argsort(np.where(rows >= 0, -out_sims, np.inf), axis=1, kind="stable")
        return ItemNeighbours(np.take_along_axis(rows, order, 1), np.take_along_axis(out_sims, order, 1))

    def __getattr__(self, name: str):  # only for what this object lacks: the base index's metadata
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)

    def _vectors(self, rows: list[int]) -> np.ndarray:
        from schemas.ranking import compose_item_vector
        from streamer.items import hash_vector

        b, base = self.bundle, self.base
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        texts, at = [], []
        for k, r in enumerate(rows):
            j = self._own.get(base.ids[r])
            if j is not None:
                out[k] = b.item_vecs[j]
            elif base.texts[r] and b.encoder is not None:
                texts.append(base.texts[r])
                at.append(k)
            else:
                cat = b.category_vecs.get(base.categories[r]) if base.categories[r] else None
                v = compose_item_vector(None, cat)
                out[k] = v if v is not None else hash_vector(base.ids[r], self.dim)
        for start in range(0, len(texts), 256):
            vecs = b.encode_texts(texts[start : start + 256])
            for k, v in zip(at[start : start + 256], vecs):
                r = rows[k]
                cat = b.category_vecs.get(base.categories[r]) if base.categories[r] else None
                out[k] = compose_item_vector(v, cat)
        return out

    def _set(self, rows: list[int]) -> None:
        if rows:
            vecs = self._vectors(rows)
            self.vecs[rows] = vecs
            self.ann.add_items(vecs, np.asarray(rows, dtype=np.int64), replace_deleted=False)

    def sync(self) -> None:
        n = len(self.base)
        if n <= self.synced:
            return
        if n > self.capacity:
            cap = max(n, 2 * self.capacity)
            vecs = np.zeros((cap, self.dim), dtype=np.float32)
            vecs[: self.capacity] = self.vecs
            self.vecs = vecs
            self.ann.resize_index(cap)
            self.capacity = cap
        self._set(list(range(self.synced, n)))
        self.synced = n

    def refresh(self, rows) -> None:
        """Recompute the vectors of ``rows`` (catalog records changed; this version's own catalog excepted)."""
        self.sync()
        self._set([r for r in rows if r < self.synced and self.base.ids[r] not in self._own])

    def nearest(self, queries: np.ndarray, k: int):
        from streamer.items import ItemIndex

        self.sync()
        return ItemIndex.nearest(self, queries, k)


class ServedVersion:
    """A version served next to production for the A/B split: its sessions (``bundle``), its item
    index over production's items (``AlignedIndex``), its ranker, list mix and query cache. Has the
    attributes the pipeline's ranking reads from itself for production (duck-typed)."""

    def __init__(self, bundle: ModelBundle, base_index, list_size: int) -> None:
        from collections import OrderedDict

        from schemas.serving import ListParams
        from streamer.ranking import OnnxRanker

        self.bundle = bundle
        self.index = AlignedIndex(base_index, bundle)
        self.ranker = OnnxRanker(bundle)
        self.list_params = ListParams.from_manifest(bundle.manifest, list_size)
        self.model_items = set(bundle.item_ids)
        self._query_cache: OrderedDict = OrderedDict()

    def query_vectors(self, queries: list[str]) -> dict[str, np.ndarray]:
        return cached_query_vectors(self.bundle, self._query_cache, queries)


# ---- loading for the worker, and the hot swap beside it -------------------------------------
def load_verified(
    path: Path, *, device: str = "auto", variant: str = "auto", threads: int = 0, manifest_sha256: str | None = None
) -> ModelBundle:
    """Verify and load a version; every failure is a ``ModelRefused``.

    ``ModelBundle.load`` raises ``ModelRefused`` for what it checks, but a version whose
    manifest was sealed over damaged files (a buggy export) fails in numpy or orjson instead
    (measured: a truncated ``item_vecs.npy`` raised ValueError, a corrupt ``item_ids.json``
    JSONDecodeError). Unwrapped, that crashed the start without naming the setting, and at a
    swap it killed the model-updates feed for good. Item vectors must also be finite: flipped
    bytes under a resealed manifest load fine and would turn every score into NaN.
    """
    try:
        bundle = ModelBundle.load(
            path, device=device, variant=variant, threads=threads, manifest_sha256=manifest_sha256
        )
    except ModelRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to load is a refusal, never a crash
        raise ModelRefused(f"{path}: cannot load: {type(exc).__name__}: {exc}") from None
    if not np.isfinite(bundle.item_vecs).all():
        raise ModelRefused(f"{path}: item_vecs.npy holds non-finite values")
    return bundle


class ModelLoader:
    """Loads versions with the worker's settings (device, ranker variant, threads) and swaps them
    into a running pipeline between batches."""

    def __init__(self, settings) -> None:
        self.s = settings

    def load(self, path: Path, manifest_sha256: str | None = None) -> ModelBundle:
        return load_verified(
            path,
            device=self.s.device,
            variant=self.s.ranker_variant,
            threads=self.s.ort_threads,
            manifest_sha256=manifest_sha256,
        )

    def load_latest(self) -> ModelBundle:
        """The newest version under STREAMREC_MODEL_ROOT; ``SystemExit`` naming the setting if
        there is none or it is refused (the worker then exits 2 before connecting to anything)."""
        from streamer import metrics

        root = self.s.model_path
        path = latest_version_dir(root)
        if path is None:
            raise SystemExit(
                f"STREAMREC_MODEL_ROOT: no model version under {root} (LATEST missing): "
                f"build one with `streamrec-bootstrap --model-root {root}`"
            )
        try:
            return self.load(path)
        except ModelRefused as exc:
            metrics.MODEL_REFUSED.inc()
            raise SystemExit(f"STREAMREC_MODEL_ROOT: newest version refused: {exc}") from None

    async def swap(self, pipeline, lock, path: Path, manifest_sha256: str | None = None) -> bool:
        """Load ``path`` off the event loop; on success switch ``pipeline`` to it while holding
        ``lock`` (the lock a batch holds: the switch happens between batches). A refused version
        is logged and counted and the current one keeps serving. Returns whether it switched."""
        import asyncio

        from streamer import metrics

        loop = asyncio.get_running_loop()
        current = pipeline.bundle.version
        try:
            bundle = await loop.run_in_executor(None, self.load, path, manifest_sha256)
        except ModelRefused as exc:
            metrics.MODEL_REFUSED.inc()
            log.error("model version refused, still serving %s: %s", current, exc)
            return False
        if bundle.version == current:
            return False
        async with lock:
            index = await loop.run_in_executor(None, pipeline.build_index, bundle, pipeline.index)
            pipeline.install(bundle, index)
        metrics.MODEL_SWAPS.inc()
        log.info("switched model %s -> %s (%s)", current, bundle.version, bundle.ranker_file)
        return True
