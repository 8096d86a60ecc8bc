"""The event archive's on-disk contract: Parquet files of contract events and catalog records.

Written by the archiver (``streamrec-archive``, streamer side), read by the retrain job
(``exporters.logsource``); neither imports the other, both import this module.

Layout (UTC dates)::

    <root>/events/date=YYYY-MM-DD/<topic>-p<partition>-<first_offset>-<last_offset>.parquet
    <root>/items/date=YYYY-MM-DD/<topic>-p<partition>-<first_offset>-<last_offset>.parquet

An event lands under the date of its event time ``ts``; a catalog record under the date of its
``ts`` when it has one, else of its Kafka timestamp. One file holds records of one Kafka
partition, in offset order; its name carries the first and the last offset it holds, so the
files alone prove what was written (the archiver resumes from them, see
:func:`archived_ids`). Columns: the contract fields of ``event.v1`` / ``item.v1``
(``context`` as its JSON text) plus ``kafka_partition``, ``kafka_offset``, ``kafka_timestamp``.

A file is written under a temporary name starting with ``.`` (``.<name>.tmp-<pid>``), fsynced,
renamed into place and its folder fsynced: a reader sees a whole file or none. A leftover
temporary file (a crash mid-write) is ignored by readers and removed by :func:`clean_temp`.
"""

from __future__ import annotations

import collections
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import msgspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.models import Event, Item, value_type
from schemas.sources import Dataset, SourceStats

EVENTS = "events"
ITEMS = "items"
KINDS = (EVENTS, ITEMS)
DAY_MS = 86_400_000

_KAFKA_FIELDS = [
    pa.field("kafka_partition", pa.int32(), nullable=False),
    pa.field("kafka_offset", pa.int64(), nullable=False),
    pa.field("kafka_timestamp", pa.int64(), nullable=False),
]
_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(), dict: pa.string()}


def arrow_schema(model: type[Event] | type[Item]) -> pa.Schema:
    """The archive columns of a wire model, derived from its declaration (``schemas.models``):
    ``schema_version`` first (int16), then the model's fields in order, a JSON object (``context``)
    as its compact JSON text; a field is nullable when it is optional (default None); then the
    Kafka coordinates."""
    fields = {f.name: f for f in msgspec.structs.fields(model)}
    columns = [pa.field("schema_version", pa.int16(), nullable=False)]
    for name, f in fields.items():
        if name != "schema_version":
            columns.append(pa.field(name, _ARROW[value_type(f.type)], nullable=f.default is None))
    return pa.schema([*columns, *_KAFKA_FIELDS])


EVENT_SCHEMA = arrow_schema(Event)
ITEM_SCHEMA = arrow_schema(Item)
SCHEMAS = {EVENTS: EVENT_SCHEMA, ITEMS: ITEM_SCHEMA}
_MODELS = {EVENTS: Event, ITEMS: Item}
# Fields stored as JSON text (a JSON object on the wire: ``context``).
_JSON_TEXT = {
    kind: {f.name for f in msgspec.structs.fields(m) if value_type(f.type) is dict} for kind, m in _MODELS.items()
}

_FILE = re.compile(r"(?P<topic>.+)-p(?P<partition>\d+)-(?P<first>\d+)-(?P<last>\d+)\.parquet")
_DATE_DIR = re.compile(r"date=(\d{4}-\d{2}-\d{2})")


class ArchiveError(ValueError):
    """An archive folder or file breaks this contract; the message names the path."""


class Located(NamedTuple):
    """A contract record with the Kafka coordinates it was read from."""

    value: Event | Item
    partition: int
    offset: int
    timestamp: int  # Kafka record timestamp, epoch ms


@dataclass(frozen=True)
class ArchiveFile:
    """One committed archive file, as its path and name describe it."""

    path: Path
    kind: str
    date: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int


def file_name(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    return f"{topic}-p{partition}-{first_offset}-{last_offset}.parquet"


_DATES: dict[int, str] = {}


def utc_date(ms: int) -> str:
    """``YYYY-MM-DD`` (UTC) of epoch milliseconds."""
    day = ms // DAY_MS
    text = _DATES.get(day)
    if text is None:
        text = _DATES[day] = datetime.fromtimestamp(day * 86_400, tz=timezone.utc).date().isoformat()
    return text


def record_date(kind: str, record: Located) -> str:
    """The date folder of a record: event time for events; item time, else Kafka time, for items."""
    ts = record.value.ts
    return utc_date(record.timestamp if ts is None else ts)


# ---------------------------------------------------------------------------------------------
# Writing


def _table(kind: str, records: list[Located]) -> pa.Table:
    values = [r.value for r in records]
    kafka = {
        "kafka_partition": [r.partition for r in records],
        "kafka_offset": [r.offset for r in records],
        "kafka_timestamp": [r.timestamp for r in records],
    }
    if kind not in SCHEMAS:
        raise ValueError(f"unknown archive kind {kind!r}; one of {', '.join(KINDS)}")
    columns = {}
    for name in _MODELS[kind].__struct_fields__:
        column = [getattr(v, name) for v in values]
        if name in _JSON_TEXT[kind]:
            column = [None if c is None else orjson.dumps(c).decode() for c in column]
        columns[name] = column
    return pa.Table.from_pydict({**columns, **kafka}, schema=SCHEMAS[kind])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents, each new one made durable in its parent."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync_dir(d.parent)


def write_file(root: str | os.PathLike, kind: str, topic: str, date: str, records: list[Located]) -> Path:
    """Write ``records`` (one Kafka partition, ascending offsets, all of ``date``) as one file,
    durably: temporary name, fsync, rename into place, fsync of the folder. Returns its path.

    Refuses (FileExistsError) to overwrite a committed file: the same offsets are never archived
    twice.
    """
    if not records:
        raise ValueError("no records to write")
    if not _DATE_DIR.fullmatch(f"date={date}"):
        raise ValueError(f"bad date {date!r}; expected YYYY-MM-DD")
    partition = records[0].partition
    offsets = [r.offset for r in records]
    if any(r.partition != partition for r in records) or any(a >= b for a, b in zip(offsets, offsets[1:])):
        raise ValueError("records must come from one partition in ascending offset order")
    folder = Path(root) / kind / f"date={date}"
    _make_dirs(folder)
    final = folder / file_name(topic, partition, offsets[0], offsets[-1])
    if final.exists():
        raise FileExistsError(f"{final}: already archived")
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    table = _table(kind, records)
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(folder)
    return final


def write_batch(root: str | os.PathLike, kind: str, topic: str, records: list[Located]) -> list[Path]:
    """Write one partition's records (ascending offsets) as one file per date, oldest date first."""
    by_date: dict[str, list[Located]] = collections.defaultdict(list)
    for r in records:
        by_date[record_date(kind, r)].append(r)
    return [write_file(root, kind, topic, date, by_date[date]) for date in sorted(by_date)]


def clean_temp(root: str | os.PathLike) -> list[Path]:
    """Remove temporary files left by a writer that crashed mid-write; returns what was removed."""
    removed = []
    for kind in KINDS:
        base = Path(root) / kind
        if not base.is_dir():
            continue
        for folder in base.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.startswith(".") and ".tmp-" in path.name:
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------
# Listing and reading


def list_files(
    root: str | os.PathLike, kind: str, since_ms: int | None = None, until_ms: int | None = None
) -> list[ArchiveFile]:
    """The committed files of ``kind``, by date then name; with since/until, only dates that can
    hold records of ``[since_ms, until_ms)`` (items are always listed whole). Temporary files and
    anything else not named by this contract are ignored."""
    base = Path(root) / kind
    if not base.is_dir():
        return []
    first = utc_date(since_ms) if since_ms is not None and kind == EVENTS else None
    last = utc_date(until_ms - 1) if until_ms is not None and kind == EVENTS else None
    out = []
    for folder in sorted(base.iterdir()):
        m = _DATE_DIR.fullmatch(folder.name)
        if m is None or not folder.is_dir():
            continue
        date = m.group(1)
        if (first is not None and date < first) or (last is not None and date > last):
            continue
        for path in sorted(folder.iterdir()):
            f = _FILE.fullmatch(path.name)
            if f is None or path.name.startswith("."):
                continue
            out.append(ArchiveFile(path, kind, date, f["topic"], int(f["partition"]), int(f["first"]), int(f["last"])))
    return out


def archived_ids(
    root: str | os.PathLike, kind: str, topic: str, partition: int, from_offset: int = 0
) -> dict[int, str]:
    """``{offset: event_id or item_id}`` of the records of ``topic``/``partition`` at offsets
    ``>= from_offset`` that committed files already hold.

    Only files whose name says they reach ``from_offset`` are opened, and only two columns read.
    The id lets a writer tell a record it already archived from a different record at the same
    offset (a topic deleted and created again).
    """
    id_column = "event_id" if kind == EVENTS else "item_id"
    found: dict[int, str] = {}
    for f in list_files(root, kind):
        if f.topic == topic and f.partition == partition and f.last_offset >= from_offset:
            table = pq.read_table(f.path, columns=["kafka_offset", id_column])
            for offset, record_id in zip(table.column("kafka_offset").to_pylist(), table.column(id_column).to_pylist()):
                if offset >= from_offset:
                    found[offset] = record_id
    return found


def _check_schema(f: ArchiveFile, schema: pa.Schema) -> None:
    try:
        found = pq.read_schema(f.path)
    except (OSError, pa.ArrowException) as exc:
        raise ArchiveError(f"{f.path}: not a readable Parquet file: {exc}") from None
    for field in schema:
        index = found.get_field_index(field.name)
        if index < 0 or found.field(index).type != field.type:
            got = "missing" if index < 0 else str(found.field(index).type)
            raise ArchiveError(
                f"{f.path}: column {field.name!r} is {got}, the {f.kind} archive contract says {field.type}"
            )


def _read_tables(files: list[ArchiveFile], kind: str) -> pa.Table:
    """All ``files`` as one table (read in parallel); a file that breaks the contract is named."""
    schema = SCHEMAS[kind]
    if not files:
        return schema.empty_table()
    import pyarrow.dataset as pads

    for f in files:
        _check_schema(f, schema)
    try:
        return pads.dataset([str(f.path) for f in files], schema=schema, format="parquet").to_table()
    except (OSError, pa.ArrowException) as exc:
        raise ArchiveError(f"{files[0].path.parents[1]}: cannot read the {kind} files: {exc}") from None


def read_archive(
    root: str | os.PathLike, since_ms: int | None = None, until_ms: int | None = None, name: str | None = None
) -> Dataset:
    """An archive as contract objects, by the rules of :func:`log_dataset`. ``stats.rows`` counts
    the event records read (only the date folders that can hold the window are opened)."""
    root = Path(root)
    if not root.is_dir():
        raise ArchiveError(f"{root}: no such archive folder")
    stats = SourceStats(name=name or f"archive:{root}")
    table = _read_tables(list_files(root, EVENTS, since_ms, until_ms), EVENTS)
    stats.rows = table.num_rows
    events = _events(table)
    items = _items(_read_tables(list_files(root, ITEMS), ITEMS))
    return log_dataset(stats, events, items, since_ms, until_ms)


def log_dataset(
    stats: SourceStats,
    events: list[tuple[int, int, int, Event]],
    items: list[tuple[int, int, int, Item]],
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> Dataset:
    """The one rule by which a log becomes a data set, whether it was read from Kafka or from
    an archive. ``events`` are (ts, Kafka partition, offset, event), ``items`` (Kafka timestamp,
    partition, offset, item).

    Events with ``since_ms <= ts < until_ms`` (else counted as ``outside_window``), ordered by
    (ts, partition, offset), de-duplicated by event_id: the first in that order stays, the rest
    are counted as ``duplicate_event_id``. The catalog: the last record of each item in
    (Kafka timestamp, partition, offset) order.
    """
    for reason in ("duplicate_event_id", "outside_window"):
        stats.dropped.setdefault(reason, 0)
    lo = since_ms if since_ms is not None else -(2**63)
    hi = until_ms if until_ms is not None else 2**63 - 1
    inside = [x for x in events if lo <= x[0] < hi]
    stats.dropped["outside_window"] += len(events) - len(inside)
    inside.sort(key=lambda x: (x[0], x[1], x[2]))
    kept: list[Event] = []
    seen: set[str] = set()
    for _ts, _partition, _offset, event in inside:
        if event.event_id in seen:
            stats.dropped["duplicate_event_id"] += 1
            continue
        seen.add(event.event_id)
        kept.append(event)
    items = sorted(items, key=lambda x: (x[0], x[1], x[2]))
    catalog: dict[str, Item] = {}
    for _ts, _partition, _offset, item in items:
        if item.item_id in catalog:
            stats.notes["item_records_superseded"] += 1
        catalog[item.item_id] = item
    stats.events = len(kept)
    stats.items = len(catalog)
    stats.event_types = collections.Counter(e.type for e in kept)
    return Dataset(stats.name, kept, catalog, stats)


_EVENT_ARGS = Event.__struct_fields__  # constructor order
_ITEM_ARGS = Item.__struct_fields__
_COORDINATES = ("kafka_partition", "kafka_offset", "kafka_timestamp")


def _events(table: pa.Table) -> list[tuple[int, int, int, Event]]:
    columns = [table.column(n).to_pylist() for n in _EVENT_ARGS]
    for i, name in enumerate(_EVENT_ARGS):
        if name in _JSON_TEXT[EVENTS] and any(c is not None for c in columns[i]):
            loads = orjson.loads
            columns[i] = [None if c is None else loads(c) for c in columns[i]]
    coordinates = [table.column(n).to_pylist() for n in _COORDINATES[:2]]
    return list(zip(columns[_EVENT_ARGS.index("ts")], *coordinates, map(Event, *columns)))


def _items(table: pa.Table) -> list[tuple[int, int, int, Item]]:
    columns = [table.column(n).to_pylist() for n in _ITEM_ARGS]
    partitions, offsets, timestamps = (table.column(n).to_pylist() for n in _COORDINATES)
    return list(zip(timestamps, partitions, offsets, map(Item, *columns)))
