"""The shared real data sets, mapped onto the wire contract with explicit, counted rules.

The replay tool (``devtools.replay``) and the retrain job (``exporters``) both read the raw files
through this module, so a row is cleaned the same way whether it reaches the model through Kafka
or straight from disk. Every raw row lands in exactly one bucket, either an event or one drop
reason, and ``SourceStats`` proves it: ``rows == events + sum(dropped)``.

Events keep file order: the baselines' tie rules (first line after a cut, leave-one-out by
timestamp then file order) depend on it. Event ids are derived from the raw line, so loading a
file twice gives the same ids and a replayed event is recognisably the same event.

Every event and item passes through the contract's validating ``from_dict``: a row the
contract would refuse is counted under ``invalid_<reason>`` here instead of surfacing later as
a dead letter.
"""

from __future__ import annotations

import collections
import csv
import gzip
import hashlib
import itertools
import os
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from schemas.models import Event, Item, ValidationError

DATASETS = ("online_retail", "taobao", "movielens")

ONLINE_RETAIL_FILE = Path("online_retail") / "online_retail.csv.gz"
TAOBAO_FILE = Path("taobao_userbehavior_sample") / "UserBehavior_head.csv"
MOVIELENS_INTER_FILE = Path("movielens_100k") / "ml-100k.inter"
MOVIELENS_ITEM_FILE = Path("movielens_100k") / "ml-100k.item"

# Postage, fees, manual adjustments, samples, discounts, gift vouchers: lines, but not products.
NON_PRODUCT_CODES = frozenset(
    {"POST", "DOT", "M", "C2", "D", "S", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS", "B", "m"}
)
NON_PRODUCT_PREFIX = "gift_"
ONLINE_RETAIL_COLUMNS = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
]

TAOBAO_TYPES = {"pv": "view", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"}
# The data set documents 2017-11-25 .. 2017-12-03 in China time (UTC+8).
TAOBAO_PERIOD_START_S = 1_511_539_200  # 2017-11-25T00:00:00+08:00
TAOBAO_PERIOD_END_S = 1_512_316_800  # 2017-12-04T00:00:00+08:00 (exclusive)


@dataclass
class SourceStats:
    """Where every raw row went. ``dropped`` maps a reason to its row count."""

    rows: int = 0
    events: int = 0
    items: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    event_types: collections.Counter = field(default_factory=collections.Counter)
    # Informational counts that drop nothing (e.g. stock codes with several descriptions).
    notes: collections.Counter = field(default_factory=collections.Counter)
    name: str = ""

    @property
    def balanced(self) -> bool:
        return self.rows == self.events + sum(self.dropped.values())

    def table(self) -> str:
        """Aligned text table: events per type, drops per reason, and the row balance check."""
        lines: list[tuple[str, int | str]] = [(f"{self.name or 'dataset'}: raw rows", self.rows)]
        lines += [(f"  event  {t}", n) for t, n in sorted(self.event_types.items(), key=lambda kv: -kv[1])]
        lines.append(("  events total", self.events))
        lines += [(f"  drop   {r}", n) for r, n in self.dropped.items()]
        lines.append(("  dropped total", sum(self.dropped.values())))
        status = "OK" if self.balanced else "MISMATCH"
        lines.append(("  check  rows == events + dropped", status))
        lines.append(("items", self.items))
        lines += [(f"  note   {k}", n) for k, n in sorted(self.notes.items())]
        width = max(len(label) for label, _ in lines) + 2
        return "\n".join(f"{label:<{width}}{(f'{v:,}' if isinstance(v, int) else v):>10}" for label, v in lines)


@dataclass
class Dataset:
    """Events in file order, items by id (first-seen order), and the accounting of every row."""

    name: str
    events: list[Event]
    items: dict[str, Item]
    stats: SourceStats


def default_data_dir() -> Path:
    """``$STREAMREC_DATA_DIR``, else ``../shared/data`` next to the repository, else ``/work/shared/data``."""
    env = os.environ.get("STREAMREC_DATA_DIR")
    if env:
        return Path(env)
    candidates = [Path(__file__).resolve().parents[1].parent / "shared" / "data", Path("/work/shared/data")]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"shared data folder not found (tried {tried}); set STREAMREC_DATA_DIR")


def load_dataset(name: str, data_dir: Path | None = None, limit_rows: int | None = None) -> Dataset:
    """Load one of DATASETS as contract events (file order) and items.

    ``limit_rows`` reads only the first N data rows (handy for tests and demos); the stats then
    describe those rows.
    """
    loaders = {"online_retail": _load_online_retail, "taobao": _load_taobao, "movielens": _load_movielens}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if limit_rows is not None and limit_rows < 0:
        raise ValueError("limit_rows must be >= 0")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    dataset = loaders[name](root, limit_rows)
    dataset.stats.name = name
    dataset.stats.events = len(dataset.events)
    dataset.stats.items = len(dataset.items)
    dataset.stats.event_types = collections.Counter(e.type for e in dataset.events)
    return dataset


def _limited(lines: Iterable[str], limit_rows: int | None) -> Iterator[str]:
    """Data lines without their line terminator, at most ``limit_rows`` of them."""
    return (line.rstrip("\r\n") for line in itertools.islice(lines, limit_rows))


def _event(stats: SourceStats, fields: dict) -> Event | None:
    """Validate through the contract; a refused row is counted, never raised."""
    try:
        return Event.from_dict(fields)
    except ValidationError as exc:
        stats.dropped[f"invalid_{exc.reason}"] += 1
        return None


# ---------------------------------------------------------------------------------------------
# online_retail


def _stats(*reasons: str) -> SourceStats:
    """Stats listing each of a loader's drop reasons, so that the table shows zeros too."""
    return SourceStats(dropped=collections.Counter(dict.fromkeys(reasons, 0)))


def _load_online_retail(root: Path, limit_rows: int | None) -> Dataset:
    """UCI Online Retail: invoice lines -> purchase / cancel events; stock codes -> items.

    Order of the checks (each row lands in the first bucket that applies): exact_duplicate,
    malformed_row (not 8 columns), no_user, malformed_row (a number or date that does not
    parse), non_product_code, stock_adjustment (Quantity <= 0 on an invoice that is not a
    cancellation). InvoiceDate is taken as UTC; InvoiceNo becomes the event's session_id.
    """
    stats = _stats("exact_duplicate", "malformed_row", "no_user", "non_product_code", "stock_adjustment")
    events: list[Event] = []
    seen: set[bytes] = set()
    descriptions: dict[str, collections.Counter[str]] = {}
    prices: dict[str, list[float]] = {}
    user_ids: dict[str, str] = {}
    times: dict[str, int] = {}

    with gzip.open(root / ONLINE_RETAIL_FILE, "rt", encoding="utf-8", newline="") as f:
        header = next(csv.reader([f.readline()]))
        if header != ONLINE_RETAIL_COLUMNS:
            raise ValueError(f"{ONLINE_RETAIL_FILE}: unexpected header {header}")
        for line in _limited(f, limit_rows):
            stats.rows += 1
            digest = hashlib.sha1(line.encode("utf-8")).digest()
            if digest in seen:
                stats.dropped["exact_duplicate"] += 1
                continue
            seen.add(digest)
            # Quoted fields (commas or quotes inside a description) are rare: split the rest.
            row = next(csv.reader([line])) if '"' in line else line.split(",")
            if len(row) != 8:
                stats.dropped["malformed_row"] += 1
                continue
            invoice, code, description, quantity_s, date_s, price_s, customer, _country = row
            if not customer:
                stats.dropped["no_user"] += 1
                continue
            try:
                quantity, price = int(quantity_s), float(price_s)
                ts = times.get(date_s)
                if ts is None:
                    ts = times[date_s] = _utc_ms(date_s)
                user_id = user_ids.get(customer)
                if user_id is None:
                    user_id = user_ids[customer] = _integral(customer)
            except ValueError:
                stats.dropped["malformed_row"] += 1
                continue
            if code in NON_PRODUCT_CODES or code.startswith(NON_PRODUCT_PREFIX):
                stats.dropped["non_product_code"] += 1
                continue
            cancel = invoice.startswith("C")
            if quantity <= 0 and not cancel:
                stats.dropped["stock_adjustment"] += 1
                continue
            event = _event(
                stats,
                {
                    "event_id": "or-" + digest.hex()[:16],
                    "user_id": user_id,
                    "type": "cancel" if cancel else "purchase",
                    "item_id": code,
                    "ts": ts,
                    "session_id": invoice,
                    "quantity": abs(quantity),
                    "price": price,
                },
            )
            if event is None:
                continue
            events.append(event)
            counts = descriptions.get(code)
            if counts is None:
                counts = descriptions[code] = collections.Counter()
                prices[code] = []
            text = description.strip()
            if text:
                counts[text] += 1
            prices[code].append(price)

    items: dict[str, Item] = {}
    for code, counts in descriptions.items():
        # max() keeps the first of equal counts, and a Counter remembers first-seen order.
        title = max(counts.items(), key=lambda kv: kv[1])[0] if counts else None
        if len(counts) > 1:
            stats.notes["items_with_several_descriptions"] += 1
        if not counts:
            stats.notes["items_without_description"] += 1
        fields = {"item_id": code, "price": statistics.median(prices[code])}
        if title:
            fields["title"] = title
        items[code] = Item.from_dict(fields)
    return Dataset("online_retail", events, items, stats)


def _utc_ms(text: str) -> int:
    """``2010-12-01 08:26:00`` read as UTC -> epoch ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()) * 1000


def _integral(text: str) -> str:
    """``"17850.0"`` -> ``"17850"``; a non-integral id is malformed."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(f"non-integral id {text!r}")
    return str(int(value))


# ---------------------------------------------------------------------------------------------
# taobao


def _load_taobao(root: Path, limit_rows: int | None) -> Dataset:
    """Tianchi UserBehavior sample: pv/cart/fav/buy rows -> events; items carry only a category.

    Checks in order: exact_duplicate, malformed_row (the file's truncated last line lands here),
    out_of_period (outside 2017-11-25 .. 2017-12-03, UTC+8). Then truncated_last_user: the file
    is a byte prefix of a file grouped by user, so its last user's history is cut off mid-way;
    that user's events are dropped (with them the catalog has 55,344 items and 801 next-any test
    cases, without them the 55,209 items and 800 cases of BASELINES.md).
    """
    stats = _stats("exact_duplicate", "malformed_row", "out_of_period", "truncated_last_user")
    events: list[Event] = []
    seen: set[bytes] = set()
    categories: dict[str, str] = {}

    with open(root / TAOBAO_FILE, encoding="ascii", newline="") as f:
        for line in _limited(f, limit_rows):
            stats.rows += 1
            digest = hashlib.sha1(line.encode("ascii")).digest()
            if digest in seen:
                stats.dropped["exact_duplicate"] += 1
                continue
            seen.add(digest)
            parts = line.split(",")
            if (
                len(parts) != 5
                or parts[3] not in TAOBAO_TYPES
                or not all(p.isascii() and p.isdigit() for p in (parts[0], parts[1], parts[2], parts[4]))
            ):
                stats.dropped["malformed_row"] += 1
                continue
            user_id, item_id, category, behaviour, seconds = parts
            if not TAOBAO_PERIOD_START_S <= int(seconds) < TAOBAO_PERIOD_END_S:
                stats.dropped["out_of_period"] += 1
                continue
            event = _event(
                stats,
                {
                    "event_id": "tb-" + digest.hex()[:16],
                    "user_id": user_id,
                    "type": TAOBAO_TYPES[behaviour],
                    "item_id": item_id,
                    "ts": int(seconds) * 1000,
                },
            )
            if event is None:
                continue
            events.append(event)
            known = categories.setdefault(item_id, category)
            if known != category:
                stats.notes["category_changes_ignored"] += 1

    if events:
        last_user = events[-1].user_id
        kept = [e for e in events if e.user_id != last_user]
        stats.dropped["truncated_last_user"] += len(events) - len(kept)
        events = kept
        used = {e.item_id for e in events}
        categories = {i: c for i, c in categories.items() if i in used}
    items = {item_id: Item.from_dict({"item_id": item_id, "category": cat}) for item_id, cat in categories.items()}
    return Dataset("taobao", events, items, stats)


# ---------------------------------------------------------------------------------------------
# movielens


def _atomic_columns(header: str, path: Path, needed: tuple[str, ...]) -> list[int]:
    """Positions of ``needed`` in a RecBole typed header (``user_id:token\\titem_id:token...``)."""
    names = [column.split(":", 1)[0] for column in header.rstrip("\r\n").split("\t")]
    missing = [n for n in needed if n not in names]
    if missing:
        raise ValueError(f"{path}: header lacks {missing}")
    return [names.index(n) for n in needed]


def _load_movielens(root: Path, limit_rows: int | None) -> Dataset:
    """MovieLens-100K (RecBole atomic files): every rating is a ``rating`` event.

    Items are the whole catalog of ``ml-100k.item`` (also with ``limit_rows``): title
    ``"Toy Story (1995)"``, category the first genre.
    """
    stats = _stats("malformed_row", "exact_duplicate")
    events: list[Event] = []
    seen: set[str] = set()
    with open(root / MOVIELENS_INTER_FILE, encoding="utf-8", newline="") as f:
        cols = _atomic_columns(f.readline(), MOVIELENS_INTER_FILE, ("user_id", "item_id", "rating", "timestamp"))
        width = max(cols) + 1
        for line in _limited(f, limit_rows):
            stats.rows += 1
            parts = line.split("\t")
            try:
                if len(parts) < width:
                    raise ValueError("short row")
                user_id, item_id = parts[cols[0]], parts[cols[1]]
                rating, ts = float(parts[cols[2]]), round(float(parts[cols[3]]) * 1000)
            except ValueError:
                stats.dropped["malformed_row"] += 1
                continue
            event_id = f"ml-{user_id}-{item_id}-{ts}"
            if event_id in seen:
                stats.dropped["exact_duplicate"] += 1
                continue
            seen.add(event_id)
            event = _event(
                stats,
                {
                    "event_id": event_id,
                    "user_id": user_id,
                    "type": "rating",
                    "item_id": item_id,
                    "ts": ts,
                    "rating": rating,
                },
            )
            if event is not None:
                events.append(event)

    items: dict[str, Item] = {}
    with open(root / MOVIELENS_ITEM_FILE, encoding="utf-8", newline="") as f:
        cols = _atomic_columns(f.readline(), MOVIELENS_ITEM_FILE, ("item_id", "movie_title", "release_year", "class"))
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) <= max(cols) or not parts[cols[0]]:
                stats.notes["malformed_item_rows"] += 1
                continue
            item_id, title, year, genres = (parts[c].strip() for c in cols)
            fields = {"item_id": item_id, "title": f"{title} ({year})" if year else title}
            if genres:
                fields["category"] = genres.split()[0]
            try:
                items[item_id] = Item.from_dict(fields)
            except ValidationError as exc:
                stats.notes[f"invalid_item_{exc.reason}"] += 1
    return Dataset("movielens", events, items, stats)
