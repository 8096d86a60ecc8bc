"""The archive's on-disk contract: round trip, date partitioning, atomic files, resume proof."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from schemas.archive import (
    EVENTS,
    ITEMS,
    ArchiveError,
    Located,
    archived_ids,
    clean_temp,
    list_files,
    read_archive,
    write_batch,
    write_file,
)
from schemas.models import Event, Item

DAY = 86_400_000
T0 = 1_322_697_600_000  # 2011-12-01T00:00:00Z


def ev(i: int, ts: int, user: str = "u1", **extra) -> Event:
    return Event(f"e{i}", user, extra.pop("type", "purchase"), ts, item_id=extra.pop("item_id", f"i{i % 3}"), **extra)


def loc(value, offset: int, partition: int = 0, kafka_ts: int = T0) -> Located:
    return Located(value, partition, offset, kafka_ts)


def test_round_trip_keeps_every_contract_field(tmp_path):
    rich = Event("e1", "u1", "search", T0 + 5, query="red mug", session_id="s1", context={"page": [1, {"a": 2.5}]})
    full = Event("e2", "u2", "rating", T0 + 6, item_id="i9", quantity=-3, price=1.25, rating=4.5)
    write_batch(tmp_path, EVENTS, "events", [loc(rich, 10), loc(full, 11)])
    items = [Item("i9", title="Mug", description="d", category="c", brand="b", price=2.0, available=False, ts=T0)]
    write_batch(tmp_path, ITEMS, "items", [loc(items[0], 3, partition=2)])
    ds = read_archive(tmp_path)
    assert ds.events == [rich, full]
    assert ds.items == {"i9": items[0]}
    assert ds.stats.events == 2 and ds.stats.rows == 2 and ds.stats.items == 1
    table = pq.read_table(list_files(tmp_path, EVENTS)[0].path)
    assert table.column("kafka_offset").to_pylist() == [10, 11]
    assert table.column("kafka_partition").to_pylist() == [0, 0]


def test_files_are_partitioned_by_event_date_and_named_by_offsets(tmp_path):
    records = [loc(ev(i, T0 + (i % 3) * DAY + i), offset=100 + i, partition=3) for i in range(9)]
    paths = write_batch(tmp_path, EVENTS, "shop.events", records)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in paths)
    assert names == [
        "events/date=2011-12-01/shop.events-p3-100-106.parquet",
        "events/date=2011-12-02/shop.events-p3-101-107.parquet",
        "events/date=2011-12-03/shop.events-p3-102-108.parquet",
    ]
    files = list_files(tmp_path, EVENTS)
    assert [(f.topic, f.partition, f.first_offset, f.last_offset) for f in files] == [
        ("shop.events", 3, 100, 106),
        ("shop.events", 3, 101, 107),
        ("shop.events", 3, 102, 108),
    ]
    # an item without its own time is filed under its Kafka timestamp's date
    write_batch(tmp_path, ITEMS, "items", [loc(Item("a"), 0, kafka_ts=T0 + 40 * DAY)])
    assert [f.date for f in list_files(tmp_path, ITEMS)] == ["2012-01-10"]


def test_read_orders_by_time_partition_offset_and_drops_duplicate_ids(tmp_path):
    # the same event redelivered at a later offset of another partition; two events at one instant
    write_batch(tmp_path, EVENTS, "events", [loc(ev(1, T0 + 50), 0, 1), loc(ev(2, T0 + 10), 1, 1)])
    write_batch(tmp_path, EVENTS, "events", [loc(ev(3, T0 + 10, user="u2"), 0, 0), loc(ev(1, T0 + 50), 7, 0)])
    ds = read_archive(tmp_path)
    assert [e.event_id for e in ds.events] == ["e3", "e2", "e1"]
    assert ds.stats.dropped["duplicate_event_id"] == 1
    assert ds.stats.rows == 4 and ds.stats.balanced


def test_since_until_window_on_event_time(tmp_path):
    write_batch(tmp_path, EVENTS, "events", [loc(ev(i, T0 + i * DAY), i) for i in range(5)])
    ds = read_archive(tmp_path, since_ms=T0 + DAY, until_ms=T0 + 3 * DAY)
    assert [e.event_id for e in ds.events] == ["e1", "e2"]
    # only the date folders that can hold the window are opened
    assert ds.stats.rows == 2 and ds.stats.dropped["outside_window"] == 0
    ds = read_archive(tmp_path, since_ms=T0 + DAY + 1)
    assert [e.event_id for e in ds.events] == ["e2", "e3", "e4"] and ds.stats.dropped["outside_window"] == 1


def test_latest_catalog_record_wins(tmp_path):
    write_batch(
        tmp_path,
        ITEMS,
        "items",
        [loc(Item("a", title="old"), 0, kafka_ts=T0), loc(Item("a", title="new"), 1, kafka_ts=T0 + 1)],
    )
    ds = read_archive(tmp_path)
    assert ds.items["a"].title == "new" and ds.stats.notes["item_records_superseded"] == 1


def test_leftover_temp_file_is_ignored_by_readers_and_cleaned(tmp_path):
    path = write_file(tmp_path, EVENTS, "events", "2011-12-01", [loc(ev(1, T0), 5)])
    half = path.parent / f".{path.name.replace('5-5', '6-9')}.tmp-1234"
    half.write_bytes(b"PAR1 half a file")
    assert [e.event_id for e in read_archive(tmp_path).events] == ["e1"]
    assert len(list_files(tmp_path, EVENTS)) == 1
    assert clean_temp(tmp_path) == [half]
    assert not half.exists() and path.exists()


def test_a_committed_file_is_never_overwritten(tmp_path):
    write_file(tmp_path, EVENTS, "events", "2011-12-01", [loc(ev(1, T0), 5)])
    with pytest.raises(FileExistsError):
        write_file(tmp_path, EVENTS, "events", "2011-12-01", [loc(ev(2, T0), 5)])
    assert [e.event_id for e in read_archive(tmp_path).events] == ["e1"]


def test_write_refuses_mixed_partitions_or_unordered_offsets(tmp_path):
    with pytest.raises(ValueError):
        write_file(tmp_path, EVENTS, "events", "2011-12-01", [loc(ev(1, T0), 5), loc(ev(2, T0), 4)])
    with pytest.raises(ValueError):
        write_file(tmp_path, EVENTS, "events", "2011-12-01", [loc(ev(1, T0), 5), loc(ev(2, T0), 6, partition=1)])
    assert list_files(tmp_path, EVENTS) == []


def test_archived_ids_prove_what_was_written_past_an_offset(tmp_path):
    write_batch(tmp_path, EVENTS, "events", [loc(ev(i, T0 + (i % 2) * DAY), 10 + i, partition=1) for i in range(6)])
    write_batch(tmp_path, EVENTS, "events", [loc(ev(9, T0), 12, partition=2)])
    assert archived_ids(tmp_path, EVENTS, "events", 1, 13) == {13: "e3", 14: "e4", 15: "e5"}
    assert archived_ids(tmp_path, EVENTS, "events", 1, 16) == {}
    assert archived_ids(tmp_path, EVENTS, "other", 1, 0) == {}


def test_a_file_that_breaks_the_contract_is_named(tmp_path):
    import pyarrow as pa

    folder = tmp_path / "events" / "date=2011-12-01"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"event_id": ["x"]}), folder / "events-p0-0-0.parquet")
    with pytest.raises(ArchiveError, match="events-p0-0-0.parquet"):
        read_archive(tmp_path)
    with pytest.raises(ArchiveError, match="no such archive"):
        read_archive(tmp_path / "missing")
