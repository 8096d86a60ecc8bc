"""The protocol for any log: what is an interaction, the time split by the log's own clock
(next-item, next-new), leave-one-out, explicit cut dates; hand-made logs with known answers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from exporters.dataset import BUNDLED, SplitSpec, build_interactions, make_split, parse_time
from exporters.job import _window
from schemas.models import Event
from schemas.ranking import DAY_MS

T0 = parse_time("2024-03-01")


def log(rows: list[tuple]) -> SimpleNamespace:
    """A log from (user, item, day offset, type) rows in log order (any name: nothing keys on it)."""
    events = [
        Event(
            event_id=f"e{i}",
            user_id=u,
            type=t,
            ts=T0 + round(d * DAY_MS),
            item_id=it,
            **({"query": "q"} if t == "search" else {}),
        )
        for i, (u, it, d, t) in enumerate(rows)
    ]
    items = {
        e.item_id: SimpleNamespace(item_id=e.item_id, title=None, description=None, category=None)
        for e in events
        if e.item_id
    }
    return SimpleNamespace(name="any shop", events=events, items=items)


def cases(inter, split) -> dict[str, str]:
    return {inter.user_ids[u]: inter.item_ids[t] for u, t in zip(split.case_users, split.case_targets)}


ROWS = [
    ("u1", "A", 0, "view"),
    ("u1", "B", 1, "purchase"),
    ("u2", "A", 2, "add_to_cart"),
    ("u3", "C", 3, "click"),
    ("u1", "C", 5.5, "view"),  # validation period [5, 8): u1 -> C (next-item and next-new)
    ("u2", "A", 6, "purchase"),  # u2 -> A (a repeat: next-item only)
    ("u2", "D", 7, "view"),  # u2's first new item in validation
    ("u1", "B", 8.5, "purchase"),  # test period (last 2 days): u1 -> B (repeat) then D (new)
    ("u1", "D", 9, "view"),
    ("u3", "C", 9.5, "rating"),  # u3 -> C repeat, no new item
    ("u4", "A", 9.9, "view"),  # u4: no history before the cut, not a case
    ("u9", "Z", 9.99, "view"),  # the log's newest event: its clock ends here
]


def test_time_split_by_the_logs_own_clock() -> None:
    inter = build_interactions(log(ROWS), SplitSpec(test_days=2, val_days=3))
    end = T0 + round(9.99 * DAY_MS) + 1
    test, val = make_split(inter, "next-item", "test"), make_split(inter, "next-item", "validation")
    assert (test.cut, val.cut, val.end) == (end - 2 * DAY_MS, end - 5 * DAY_MS, end - 2 * DAY_MS)
    assert cases(inter, test) == {"u1": "B", "u3": "C"}
    assert cases(inter, val) == {"u1": "C", "u2": "A"}
    assert (test.case_time == test.cut).all() and not test.fit[inter.ts >= test.cut].any()
    # Validation targets stay before the test cut; models fit on what precedes each cut.
    assert (inter.ts[val.fit] < val.cut).all() and test.modes == ("in",)


def test_next_new_skips_items_seen_before_the_cut() -> None:
    inter = build_interactions(log(ROWS), SplitSpec(test_cut=T0 + 8 * DAY_MS, val_cut=T0 + 5 * DAY_MS))
    assert cases(inter, make_split(inter, "next-item", "test")) == {"u1": "B", "u3": "C"}
    assert cases(inter, make_split(inter, "next-new", "test")) == {"u1": "D"}  # u3 only repeats C
    assert cases(inter, make_split(inter, "next-new", "validation")) == {"u1": "C", "u2": "D"}
    assert make_split(inter, "next-new", "test").modes == ("ex", "in")
    # BASELINES.md's names are the same protocol.
    assert (
        make_split(inter, "next-line", "test").protocol == make_split(inter, "next-any", "test").protocol == "next-item"
    )


def test_leave_one_out_on_any_log() -> None:
    inter = build_interactions(log(ROWS), SplitSpec(split="loo"))
    assert inter.protocols == ("loo",)
    test, val = make_split(inter, "loo", "test"), make_split(inter, "loo", "validation")
    assert cases(inter, test) == {"u1": "D", "u2": "D", "u3": "C"}  # users with >= 2 interactions
    assert cases(inter, val) == {"u1": "B", "u2": "A", "u3": "C"}
    assert test.visible.sum() == test.fit.sum() + len(val)
    with pytest.raises(ValueError, match="no protocol"):
        make_split(inter, "next-item", "test")


def test_what_is_an_interaction() -> None:
    rows = [
        ("u1", "A", 0, "purchase"),
        ("u1", "A", 0.1, "cancel"),
        ("u1", None, 0.2, "search"),
        ("u2", "B", 0.3, "view"),
        ("u2", None, 0.4, "erase_user"),
        ("u2", "C", 0.5, "view"),
        ("u3", "D", 0.6, "favorite"),
    ]
    inter = build_interactions(log(rows))
    got = [(inter.user_ids[u], inter.item_ids[i]) for u, i in zip(inter.users, inter.items)]
    assert got == [("u1", "A"), ("u2", "C"), ("u3", "D")]  # u2's view before the erase is forgotten
    assert inter.skipped == {
        "not_interaction_cancel": 1,
        "not_interaction_search": 1,
        "not_interaction_erase_user": 1,
        "erased_user": 1,
    }


def test_window_keeps_the_last_days_of_the_log() -> None:
    kept, cut = _window(log(ROWS), 2.0)
    assert cut == 7 and min(e.ts for e in kept.events) > T0 + round(7.99 * DAY_MS)


def test_split_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="before the test cut"):
        SplitSpec(test_cut=T0, val_cut=T0)
    with pytest.raises(ValueError, match="split must be"):
        SplitSpec(split="random")
    with pytest.raises(ValueError, match="not a date"):
        parse_time("first of may")
    assert parse_time("2017-12-03T00:00+08:00") == BUNDLED["taobao"].test_cut
    assert (
        parse_time("2011-10-01")
        == BUNDLED["online_retail"].test_cut
        == parse_time(str(BUNDLED["online_retail"].test_cut))
    )


def test_cli_refuses_a_log_too_small(tmp_path, monkeypatch, capsys) -> None:
    import exporters.job as job
    from exporters.cli import EXIT_REFUSED, main

    monkeypatch.setattr(job, "load_log", lambda cfg: (log(ROWS), cfg.split or SplitSpec()))
    code = main(["train", "--source", str(tmp_path / "archive"), "--model-root", str(tmp_path / "models"), "--tiny"])
    assert code == EXIT_REFUSED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streamrec-retrain: refused: log too small")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["runs.jsonl"]


def test_every_loops_and_goes_on_after_a_refusal(tmp_path, monkeypatch) -> None:
    import exporters.cli as cli
    import exporters.job as job

    monkeypatch.setattr(job, "load_log", lambda cfg: (log(ROWS), cfg.split or SplitSpec()))
    sleeps: list[float] = []
    monkeypatch.setattr(cli.time, "sleep", sleeps.append)
    code = cli.main(
        ["train", "--source", "kafka://127.0.0.1:1", "--model-root", str(tmp_path), "--every", "6h", "--runs", "3"]
    )
    assert code == cli.EXIT_REFUSED and len(sleeps) == 2 and all(5.9 * 3600 < s <= 6 * 3600 for s in sleeps)
    from exporters.registry import read_runs

    assert [r["status"] for r in read_runs(tmp_path)] == ["refused"] * 3
    assert [cli.parse_duration(x) for x in ("6h", "30m", "1d", "90s", "15")] == [21600, 1800, 86400, 90, 15]


def test_bad_source_fails_at_start_in_one_line(capsys) -> None:
    from exporters.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--source", "http://x:1", "--model-root", "/nonexistent"])
    assert e.value.code == 2 and "use kafka://HOST:PORT" in capsys.readouterr().err
