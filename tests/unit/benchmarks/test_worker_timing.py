"""benchmarks.worker_timing: the latency table read back from the worker's histograms."""

from benchmarks.worker_timing import BUCKET_S, BUCKETS, LATENCY_PARTS, latency_summary


def _hist(seconds: list[float]) -> list[int]:
    h = [0] * BUCKETS
    for s in seconds:
        h[min(int(s / BUCKET_S), BUCKETS - 1)] += 1
    return h


def _row(table: str, part: str) -> tuple[float, float]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {part} |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    return float(cells[2]), float(cells[3])


def test_median_and_p99_per_part_within_a_bucket():
    # 100 events: fetch 1..100 ms; process 20 ms for 98 events, 300 ms for the two slowest
    fetch = [i / 1000 for i in range(1, 101)]
    process = [0.020] * 98 + [0.300] * 2
    table = latency_summary({"latency": {"fetch": _hist(fetch), "process": _hist(process), "sink": [0] * BUCKETS}})
    med, p99 = _row(table, "fetch")
    assert abs(med - 50) <= 1.0 and abs(p99 - 99) <= 1.0
    med, p99 = _row(table, "process")
    assert abs(med - 20) <= 1.0 and abs(p99 - 300) <= 1.0
    assert "| sink |" not in table  # a part nothing was counted in is left out


def test_nothing_counted_prints_nothing():
    assert latency_summary({}) == ""
    assert latency_summary({"latency": {k: [0] * BUCKETS for k, _ in LATENCY_PARTS}}) == ""
