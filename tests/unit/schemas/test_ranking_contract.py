"""The ranking contract between job and worker: manifests naming other features are refused."""

from __future__ import annotations

from schemas.ranking import (
    COVIS_WINDOW,
    EVENT_TYPE_IDS,
    FEATURE_NAMES,
    RECENCY_DAYS,
    check_manifest_features,
    feature_params,
    item_text,
)


def _manifest(**over):
    m = {"features": list(FEATURE_NAMES), "event_type_ids": dict(EVENT_TYPE_IDS), "feature_params": feature_params()}
    m.update(over)
    return m


def test_matching_manifest_is_accepted() -> None:
    assert check_manifest_features(_manifest()) is None
    assert check_manifest_features(_manifest(feature_params=None)) is None  # bootstrap manifests have none


def test_other_feature_order_is_refused() -> None:
    reason = check_manifest_features(_manifest(features=list(reversed(FEATURE_NAMES))))
    assert reason is not None and "features mismatch" in reason


def test_other_covis_window_or_recency_is_refused() -> None:
    reason = check_manifest_features(_manifest(feature_params={**feature_params(), "covis_window": COVIS_WINDOW + 1}))
    assert reason is not None and "covis_window" in reason
    reason = check_manifest_features(_manifest(feature_params={**feature_params(), "recency_days": RECENCY_DAYS * 2}))
    assert reason is not None and "recency_days" in reason


def test_half_life_is_a_setting_not_a_refusal() -> None:
    assert check_manifest_features(_manifest(feature_params=feature_params(half_life_days=3.0))) is None


def test_event_types_must_match() -> None:
    assert (
        check_manifest_features(_manifest(event_type_ids={"view": 1}))
        == "event_type_ids mismatch between model and worker"
    )


def test_item_text_rule_shared_by_job_and_worker() -> None:
    from schemas import Item
    from streamer.items import item_text as worker_text

    assert item_text("Red lantern", "red LANTERN") == "Red lantern"
    assert item_text("Red lantern", "metal, 20 cm") == "Red lantern metal, 20 cm"
    assert item_text(None, None) == ""
    assert worker_text(Item(item_id="1", title="Red lantern", description="metal, 20 cm")) == "Red lantern metal, 20 cm"
    assert worker_text(Item(item_id="2")) is None
