"""The untuned bootstrap model version: pretrained weights, no training, ready for a worker.

A fresh deployment needs a model before any event was logged. This builds one from
all-MiniLM-L6-v2 alone: the item encoder is the sentence-transformers model as published; the
ranker holds the first ``n_layers`` pretrained layers (gated off, see ``exporters.modeling``)
and scores

    score = cos(user, cand) + 1.0 log_personal_weight + 0.5 personal_recency
            + 0.2 log_covis + 0.1 log_popularity

where the user vector is the event-type weighted mean of the user's recent item vectors. The
catalog of ``dataset`` (if any) is encoded into the item index.

``tiny=True`` swaps both BERTs for small random ones (same tokenizer and code paths) so tests
get a complete, valid model directory in seconds.

CLI: ``streamrec-bootstrap --model-root DIR [--dataset online_retail|taobao|movielens|none] [--tiny]``
prints the version folder.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Iterable

from exporters import registry
from exporters.export import export_models
from exporters.item_index import BOOTSTRAP_CATEGORY_SCALE, ItemIndex, bootstrap_item_index
from exporters.logs import setup_logging
from exporters.modeling import (
    BASE_MODEL_NAME,
    BOOTSTRAP_FEATURE_WEIGHTS,
    ItemEncoder,
    Ranker,
    base_model_info,
    load_bert,
    tiny_bert_config,
)
from exporters.text import load_tokenizer
from schemas.ranking import EVENT_TYPE_IDS, FEATURE_NAMES, MODEL_FORMAT
from schemas.serving import LIST_PARAMS_KEY

# One sequence length for the bootstrap and the retrain job (exporters.job uses this default):
# the ranker's cost grows with it (2 BERT layers over L), and 20 is what the job trains with.
DEFAULT_MAX_SEQ_LEN = 20
DEFAULT_MAX_TEXT_LEN = 32
DEFAULT_RANKER_LAYERS = 2
# Items of the published list reserved for things the user never touched. The bootstrap is not
# validated (nothing was logged yet), so it takes the share the retrain job validated on
# online_retail (min_new 10 of 20: issue 14, EVALUATION.md): without it, a wholesale buyer's
# list is twenty "you bought this N times" lines, since the frequency terms above dominate.
# A trained version ships its own validated value in the manifest's ``list_params``.
BOOTSTRAP_MIN_NEW = 10
TOKENIZER_FILE = "tokenizer.json"

log = logging.getLogger(__name__)


def build_models(tiny: bool, n_layers: int, max_text_len: int, seed: int = 0):
    """(tokenizer, item encoder, ranker) in their untuned state."""
    tok = load_tokenizer(max_text_len)
    if tiny:
        encoder = ItemEncoder(load_bert(config=tiny_bert_config(tok.get_vocab_size()), seed=seed))
        ranker_bert = load_bert(config=tiny_bert_config(tok.get_vocab_size(), layers=n_layers), seed=seed + 1)
    else:
        encoder = ItemEncoder(load_bert())
        ranker_bert = load_bert(n_layers)
    return tok, encoder.eval(), Ranker(ranker_bert, item_dim=encoder.dim).eval()


def _catalog(dataset: str | None, data_dir: Path | None) -> tuple[Iterable[Any], dict | None]:
    if dataset is None:
        return [], None
    from schemas.sources import load_dataset

    ds = load_dataset(dataset, data_dir=data_dir)
    items = sorted(ds.items.values(), key=lambda it: str(it.item_id))
    return items, {"name": dataset, "items": len(items), "events": len(ds.events)}


def export_bootstrap(
    model_root: Path,
    dataset: str | None = "online_retail",
    tiny: bool = False,
    version: str | None = None,
    *,
    data_dir: Path | None = None,
    items: Iterable[Any] | None = None,
    n_layers: int = DEFAULT_RANKER_LAYERS,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    max_text_len: int = DEFAULT_MAX_TEXT_LEN,
    publish: bool = True,
) -> Path:
    """Build, export, verify and register the untuned version; returns its folder.

    ``items`` (``schemas.models.Item``-like objects) overrides the data set's catalog, for tests
    and for deployments whose catalog comes from elsewhere. Raises when parity fails: such a
    version is never written.
    """
    t0 = time.perf_counter()
    tok, encoder, ranker = build_models(tiny, n_layers, max_text_len)
    if items is not None:
        catalog = list(items)
        ds_info = {"name": dataset or "custom", "items": len(catalog), "events": None}
    else:
        catalog, ds_info = _catalog(dataset, data_dir)
    index: ItemIndex = bootstrap_item_index(encoder, tok, catalog)
    if ds_info is not None:
        ds_info["items_with_text"] = index.with_text
    t_index = time.perf_counter()

    version = version or registry.new_version_name("bootstrap" + ("-tiny" if tiny else ""))
    with registry.StagedVersion(Path(model_root), version) as staged:
        result = export_models(
            encoder,
            ranker,
            tok,
            staged.path,
            max_seq_len=max_seq_len,
            item_vecs=index.vecs if len(index.vecs) else None,
        )
        if not result.parity["ok"]:
            raise RuntimeError(f"bootstrap export failed its parity check: {result.parity}")
        tok.save(str(staged.path / TOKENIZER_FILE))
        index.write(staged.path)
        t_export = time.perf_counter()
        manifest = {
            "format": MODEL_FORMAT,
            "kind": "bootstrap",
            "created_at": registry.utc_now_iso(),
            "base_model": BASE_MODEL_NAME,
            "base_model_source": base_model_info() | {"tiny_random": tiny},
            "dim": encoder.dim,
            "max_seq_len": max_seq_len,
            "max_text_len": max_text_len,
            "features": list(FEATURE_NAMES),
            "event_type_ids": dict(EVENT_TYPE_IDS),
            "ranker_variants": result.ranker_variants,
            "ranker_variant_files": result.variant_files,
            "fused_ops": result.fused_ops,
            "metrics": {},
            "parity": result.parity,
            LIST_PARAMS_KEY: {"min_new": BOOTSTRAP_MIN_NEW},
            "ranker": {
                "n_layers": ranker.config.n_layers,
                "scoring": "cos(user, cand) + sum(feature_weights[f] * f); user = event-type weighted mean of sequence item vectors",
                "feature_weights": BOOTSTRAP_FEATURE_WEIGHTS,
            },
            "item_index": {
                "items": len(index.item_ids),
                "with_text": index.with_text,
                "category_scale": BOOTSTRAP_CATEGORY_SCALE,
            },
            "tokenizer": {"file": TOKENIZER_FILE, "truncation": max_text_len, "padding": "batch_longest"},
            "timings_s": {
                "models_and_index": round(t_index - t0, 2),
                "export_and_parity": round(t_export - t_index, 2),
            },
        }
        if ds_info is not None:
            manifest["dataset"] = ds_info  # no training window: nothing was trained
        final = staged.commit(manifest, publish=publish)
    log.info("bootstrap version %s written in %.1fs", final, time.perf_counter() - t0)
    return final


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="streamrec-bootstrap", description="Export the untuned model version from the pretrained weights."
    )
    p.add_argument("--model-root", type=Path, required=True, help="registry folder (versions + LATEST)")
    p.add_argument(
        "--dataset", default="online_retail", help="catalog to index: online_retail, taobao, movielens or none"
    )
    p.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default: schemas.sources' default)")
    p.add_argument("--tiny", action="store_true", help="tiny random BERTs (tests, demos); not for serving")
    p.add_argument("--version", default=None)
    p.add_argument("--layers", type=int, default=DEFAULT_RANKER_LAYERS, help="pretrained layers in the ranker")
    p.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN)
    p.add_argument("--max-text-len", type=int, default=DEFAULT_MAX_TEXT_LEN)
    p.add_argument("--no-publish", action="store_true", help="write the version but leave LATEST alone")
    args = p.parse_args(argv)
    setup_logging()
    folder = export_bootstrap(
        args.model_root,
        dataset=None if args.dataset == "none" else args.dataset,
        tiny=args.tiny,
        version=args.version,
        data_dir=args.data_dir,
        n_layers=args.layers,
        max_seq_len=args.max_seq_len,
        max_text_len=args.max_text_len,
        publish=not args.no_publish,
    )
    print(folder)


if __name__ == "__main__":
    main()
