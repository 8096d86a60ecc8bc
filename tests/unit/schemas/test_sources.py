"""schemas.sources on the real shared files: every row accounted for, known rows mapped as the
data's documentation says, ids stable, and each cleaning rule exercised on small generated files."""

from __future__ import annotations

import collections
import csv
import gzip
import hashlib
from pathlib import Path

import pytest

from schemas import Event, Item, decode_event, decode_item, encode
from schemas.sources import (
    DATASETS,
    MOVIELENS_INTER_FILE,
    MOVIELENS_ITEM_FILE,
    ONLINE_RETAIL_FILE,
    TAOBAO_FILE,
    SourceStats,
    default_data_dir,
    load_dataset,
)

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"


def sha16(line: str) -> str:
    return hashlib.sha1(line.encode("utf-8")).hexdigest()[:16]


@pytest.fixture(scope="module")
def retail(data_dir):
    return load_dataset("online_retail", data_dir)


@pytest.fixture(scope="module")
def retail_lines(data_dir) -> list[str]:
    with gzip.open(data_dir / ONLINE_RETAIL_FILE, "rt", encoding="utf-8", newline="") as f:
        return f.read().splitlines()[1:]


@pytest.fixture(scope="module")
def taobao(data_dir):
    return load_dataset("taobao", data_dir)


@pytest.fixture(scope="module")
def movielens(data_dir):
    return load_dataset("movielens", data_dir)


# --- online_retail --------------------------------------------------------------------------------


def test_online_retail_every_row_is_accounted_for(retail):
    s = retail.stats
    assert s.rows == 541_909
    assert s.rows == s.events + sum(s.dropped.values())
    assert s.balanced
    # The data set's documented problems, in check order.
    assert s.dropped == {
        "exact_duplicate": 5_268,
        "malformed_row": 0,
        "no_user": 135_037,  # 135,080 rows without CustomerID, less those already counted as duplicates
        "non_product_code": 1_915,
        "stock_adjustment": 0,  # every Quantity <= 0 line without C also lacks a CustomerID
    }
    assert s.event_types == {"purchase": 391_183, "cancel": 8_506}
    assert (s.events, s.items) == (399_689, 3_676)
    assert s.notes["items_with_several_descriptions"] == 210


def test_online_retail_first_line(retail, retail_lines):
    assert (
        retail_lines[0]
        == "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom"
    )
    assert retail.events[0] == Event(
        event_id="or-" + sha16(retail_lines[0]),
        user_id="17850",
        type="purchase",
        ts=1_291_191_960_000,  # 2010-12-01T08:26:00Z
        item_id="85123A",
        session_id="536365",
        quantity=6,
        price=2.55,
    )


def test_online_retail_keeps_file_order(retail, retail_lines):
    # The first 45 lines are kept purchases, the 46th is POSTAGE: events follow the lines in order.
    assert [e.event_id for e in retail.events[:45]] == ["or-" + sha16(line) for line in retail_lines[:45]]
    assert retail_lines[45].split(",")[1] == "POST"
    assert retail.events[45].event_id == "or-" + sha16(retail_lines[46])
    assert all(a.ts <= b.ts for a, b in zip(retail.events, retail.events[1:]))  # this file is in date order


def test_online_retail_cancellation(retail, retail_lines):
    line = "C536383,35004C,SET OF 3 COLOURED  FLYING DUCKS,-1,2010-12-01 09:49:00,4.65,15311.0,United Kingdom"
    assert line in retail_lines
    cancel = next(e for e in retail.events if e.event_id == "or-" + sha16(line))
    assert (cancel.type, cancel.user_id, cancel.item_id, cancel.quantity, cancel.session_id) == (
        "cancel",
        "15311",
        "35004C",
        1,
        "C536383",
    )
    assert all(e.quantity > 0 for e in retail.events)


def test_online_retail_ids_unique_and_stable(retail, data_dir):
    ids = [e.event_id for e in retail.events]
    assert len(set(ids)) == len(ids)
    again = load_dataset("online_retail", data_dir, limit_rows=20_000)
    assert again.stats.rows == 20_000 and again.stats.balanced
    # A second load (here of a prefix) produces the same events with the same ids, in order.
    assert again.events == retail.events[: len(again.events)]


def test_online_retail_items(retail, retail_lines):
    assert not any(
        code in {"POST", "DOT", "M", "C2", "D", "S", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS", "B", "m"}
        or code.startswith("gift_")
        for code in retail.items
    )
    assert {e.item_id for e in retail.events} == set(retail.items)
    assert retail.items["85123A"] == Item("85123A", title="WHITE HANGING HEART T-LIGHT HOLDER", price=2.95)
    for code in ("85123A", "81950V", "35817P"):
        assert retail.items[code].title == _expected_title(retail_lines, code)
    assert all(item.category is None and item.price is not None for item in retail.items.values())


def _expected_title(lines: list[str], code: str) -> str:
    """Independent reading of the title rule for one code: the most frequent description on kept
    lines, the first seen among equals."""
    seen, counts, first = set(), collections.Counter(), {}
    for i, row in enumerate(csv.reader(lines)):
        line = lines[i]
        if row[1] != code or line in seen:
            continue
        seen.add(line)
        if row[6] and (row[0].startswith("C") or int(row[3]) > 0) and row[2].strip():
            counts[row[2].strip()] += 1
            first.setdefault(row[2].strip(), i)
    best = max(counts.values())
    tied = sorted((first[d], d) for d, n in counts.items() if n == best)
    if code != "85123A":
        assert len(tied) == 2, f"{code} was picked because its descriptions tie"
    return tied[0][1]


def test_online_retail_events_fit_the_wire_contract(retail):
    for event in retail.events[::11]:
        assert decode_event(encode(event)) == event
    for item in list(retail.items.values())[::7]:
        assert decode_item(encode(item)) == item


def write_retail(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / ONLINE_RETAIL_FILE
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        f.write("\n".join([HEADER, *rows]) + "\n")
    return tmp_path


def test_online_retail_rules_on_a_generated_file(tmp_path):
    first = "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom"
    rows = [
        first,
        first,  # exact_duplicate
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,,United Kingdom",  # no_user
        "536366,POST,POSTAGE,1,2010-12-01 08:28:00,18.0,17850.0,United Kingdom",  # non_product_code
        "536367,gift_0001_10,Dotcomgiftshop Gift Voucher,1,2010-12-01 08:30:00,8.5,17850.0,United Kingdom",
        "536368,21733,damaged,-12,2010-12-01 08:34:00,0.0,17850.0,United Kingdom",  # stock_adjustment
        "536369,21733,RED HANGING HEART T-LIGHT HOLDER,0,2010-12-01 08:34:00,2.55,17850.0,United Kingdom",
        "C536370,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-3,2010-12-01 08:35:00,2.55,17850.0,United Kingdom",
        "536371,85123A,CREAM HANGING HEART,1,2010-12-01 08:36:00,3.05,13047.0",  # malformed_row: 7 columns
        "536372,85123A,CREAM HANGING HEART,1,2010-13-01 08:36:00,3.05,13047.0,UK",  # malformed_row: date
        "536373,85123A,CREAM HANGING HEART,1,2010-12-01 08:36:00,3.05,13047.5,UK",  # malformed_row: user
        '536374,22138,"BAKING SET, 9 PIECE",3,2011-12-09 12:50:00,4.95,12680.0,France',  # quoted comma
        "536375,22138,,3,2011-12-09 12:50:00,12000000,12680.0,France",  # price over the contract: invalid
        "536376,85123A,CREAM HANGING HEART,2,2011-12-09 12:51:00,3.05,12680.0,France",
        "536377,85123A,CREAM HANGING HEART,2,2011-12-09 12:52:00,3.05,12680.0,France",
        "536378,85123A,CREAM HANGING HEART,1,2011-12-09 12:53:00,3.05,12680.0,France",
    ]
    ds = load_dataset("online_retail", write_retail(tmp_path, rows))
    assert ds.stats.dropped == {
        "exact_duplicate": 1,
        "malformed_row": 3,
        "no_user": 1,
        "non_product_code": 2,
        "stock_adjustment": 2,
        "invalid_out_of_range": 1,
    }
    assert ds.stats.rows == 16 and ds.stats.balanced
    assert [(e.type, e.user_id, e.item_id, e.quantity) for e in ds.events] == [
        ("purchase", "17850", "85123A", 6),
        ("cancel", "17850", "85123A", 3),
        ("purchase", "12680", "22138", 3),
        ("purchase", "12680", "85123A", 2),
        ("purchase", "12680", "85123A", 2),
        ("purchase", "12680", "85123A", 1),
    ]
    # 85123A: WHITE... twice (the purchase and its cancellation), CREAM... three times; the price
    # is the median over the kept lines (2.55, 2.55, 3.05, 3.05, 3.05).
    assert ds.items["85123A"] == Item("85123A", title="CREAM HANGING HEART", price=3.05)
    assert ds.items["22138"].title == "BAKING SET, 9 PIECE"
    assert ds.stats.notes["items_with_several_descriptions"] == 1
    assert "21733" not in ds.items


# --- taobao ---------------------------------------------------------------------------------------


def test_taobao_every_row_is_accounted_for(taobao):
    s = taobao.stats
    assert s.rows == 84_476 and s.balanced
    # The file's last user (a byte prefix cut them off mid-history) is dropped: 188 rows.
    assert s.dropped == {"exact_duplicate": 0, "malformed_row": 1, "out_of_period": 35, "truncated_last_user": 188}
    # README: pv 75,872 (the 35 rows before the period are all views), cart 4,497, fav 2,356, buy 1,750,
    # less the truncated last user's 179 pv, 3 cart, 5 fav and 1 buy.
    assert s.event_types == {"view": 75_658, "add_to_cart": 4_494, "favorite": 2_351, "purchase": 1_749}
    assert s.items == 55_209  # BASELINES.md's catalog


def test_taobao_truncated_last_line_is_counted_not_kept(taobao, data_dir):
    last = (data_dir / TAOBAO_FILE).read_text().splitlines()[-1]
    assert last == "100370,1968385,1875258,pv"  # cut before its timestamp
    assert "tb-" + sha16(last) not in {e.event_id for e in taobao.events}


def test_taobao_mapping(taobao, data_dir):
    first = (data_dir / TAOBAO_FILE).read_text().splitlines()[0]
    assert taobao.events[0] == Event("tb-" + sha16(first), "1", "view", 1_511_544_070_000, "2268318")
    assert taobao.items["2268318"] == Item("2268318", category="2520377")
    assert all(item.title is None for item in taobao.items.values())
    assert all(1_511_539_200_000 <= e.ts < 1_512_316_800_000 for e in taobao.events)


def test_taobao_rules_on_a_generated_file(tmp_path):
    rows = [
        "1,2268318,2520377,pv,1511544070",
        "1,2268318,2520377,pv,1511544070",  # exact_duplicate
        "1,2333346,2520771,buy,1511539199",  # out_of_period: one second before 2017-11-25 UTC+8
        "1,2333346,2520771,cart,1512316800",  # out_of_period: 2017-12-04 UTC+8
        "1,2333346,2520771,like,1511561733",  # malformed_row: unknown behaviour
        "",  # malformed_row: empty line inside the file
        "2,2576651,149192,fav,1511572885",
        "2,2576651,149192,buy,1511572886",
        "3,2576651,149192,pv,1511572887",  # truncated_last_user: the last user of the file
        "100370,1968385,1875258,pv",  # malformed_row: truncated
    ]
    path = tmp_path / TAOBAO_FILE
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(rows))
    ds = load_dataset("taobao", tmp_path)
    assert ds.stats.dropped == {"exact_duplicate": 1, "malformed_row": 3, "out_of_period": 2, "truncated_last_user": 1}
    assert [e.type for e in ds.events] == ["view", "favorite", "purchase"]
    assert ds.stats.rows == 10 and ds.stats.balanced


# --- movielens ------------------------------------------------------------------------------------


def test_movielens(movielens):
    s = movielens.stats
    assert (s.rows, s.events, s.items, sum(s.dropped.values())) == (100_000, 100_000, 1_682, 0)
    assert movielens.events[0] == Event("ml-196-242-881250949000", "196", "rating", 881_250_949_000, "242", rating=3.0)
    assert movielens.items["1"] == Item("1", title="Toy Story (1995)", category="Animation")
    assert movielens.items["2"].title == "GoldenEye (1995)"
    assert all(e.type == "rating" and 1 <= e.rating <= 5 for e in movielens.events)


def test_movielens_limit_keeps_the_whole_catalog(data_dir):
    ds = load_dataset("movielens", data_dir, limit_rows=10)
    assert (ds.stats.rows, len(ds.events), len(ds.items)) == (10, 10, 1_682)


def test_movielens_generated_file(tmp_path):
    (tmp_path / MOVIELENS_INTER_FILE).parent.mkdir(parents=True)
    (tmp_path / MOVIELENS_INTER_FILE).write_text(
        "item_id:token\tuser_id:token\ttimestamp:float\trating:float\n"  # columns found by name
        "242\t196\t881250949\t3\n242\t196\t881250949\t3\n1\t7\tsoon\t4\n1\t7\t881250950\t11\n2\t7\t881250951\t5\n"
    )
    (tmp_path / MOVIELENS_ITEM_FILE).write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "242\tKolya\t1996\tComedy\n1\tUntitled\t\t\nbroken line\n"
    )
    ds = load_dataset("movielens", tmp_path)
    assert ds.stats.dropped == {"malformed_row": 1, "exact_duplicate": 1, "invalid_out_of_range": 1}
    assert [(e.user_id, e.item_id) for e in ds.events] == [("196", "242"), ("7", "2")]
    assert ds.items["242"] == Item("242", title="Kolya (1996)", category="Comedy")
    assert ds.items["1"] == Item("1", title="Untitled")
    assert ds.stats.notes["malformed_item_rows"] == 1


# --- stats, arguments, data folder ----------------------------------------------------------------


def test_stats_table(retail):
    table = retail.stats.table()
    for word in (
        "online_retail",
        "541,909",
        "exact_duplicate",
        "5,268",
        "no_user",
        "135,037",
        "stock_adjustment",
        "purchase",
        "cancel",
        "OK",
        "items_with_several_descriptions",
    ):
        assert word in table
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1, "columns are aligned"
    bad = SourceStats(rows=3, events=1, dropped=collections.Counter(no_user=1), name="x")
    assert not bad.balanced and "MISMATCH" in bad.table()


def test_arguments(data_dir):
    with pytest.raises(ValueError, match="online_retail"):
        load_dataset("retail", data_dir)
    with pytest.raises(ValueError):
        load_dataset("taobao", data_dir, limit_rows=-1)
    empty = load_dataset("taobao", data_dir, limit_rows=0)
    assert (empty.stats.rows, empty.events, empty.items) == (0, [], {})
    assert DATASETS == ("online_retail", "taobao", "movielens")


def test_default_data_dir(monkeypatch, tmp_path, data_dir):
    monkeypatch.setenv("STREAMREC_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("STREAMREC_DATA_DIR")
    assert (default_data_dir() / ONLINE_RETAIL_FILE).exists()
