"""online_retail through the log path equals the file path within one test case (slow).

The log path is the one a deployment's events take: contract events keyed by user on 4 Kafka
partitions (the replay tool's default partitioner), written to an archive (``schemas.archive``),
read back by ``read_log`` in (ts, partition, offset) order and split by the generic protocol with
BASELINES.md's cut dates given explicitly. The file path is ``--dataset online_retail``, whose
numbers ``test_baselines_reproduce.py`` checks against BASELINES.md. Only same-timestamp lines
can change order (partition order instead of file order), so at most a few "first line" targets
differ: every metric must stay within what one test case can move.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from exporters.baselines import run_baselines
from exporters.dataset import BUNDLED, build_interactions, load_interactions, make_split
from exporters.evaluate import format_table
from exporters.logsource import read_log
from schemas.archive import Located, write_batch
from schemas.sources import load_dataset

pytestmark = pytest.mark.slow
PARTITIONS = 4
KAFKA_TS = 1_764_547_200_000  # any record timestamp: it only names the items' date folder


def archive_like_the_replay(dataset, root: Path) -> None:
    from aiokafka.partitioner import DefaultPartitioner

    partitioner, parts = DefaultPartitioner(), list(range(PARTITIONS))
    for kind, records in (
        ("items", [(i.item_id, i) for i in dataset.items.values()]),
        ("events", [(e.user_id, e) for e in dataset.events]),
    ):
        by_partition: dict[int, list[Located]] = collections.defaultdict(list)
        for key, value in records:
            p = partitioner(key.encode(), parts, parts)
            by_partition[p].append(Located(value, p, len(by_partition[p]), KAFKA_TS))
        for located in by_partition.values():
            write_batch(root, kind, kind, located)


@pytest.fixture(scope="module")
def paths(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("archive")
    archive_like_the_replay(load_dataset("online_retail", data_dir), root)
    via_log = build_interactions(read_log(str(root)), BUNDLED["online_retail"])
    return load_interactions("online_retail", data_dir), via_log


@pytest.mark.parametrize("protocol", ["next-item", "next-new"])
def test_log_path_matches_the_file_path(paths, protocol: str) -> None:
    via_file, via_log = paths
    assert (via_log.n_items, via_log.n_users, len(via_log.users)) == (
        via_file.n_items,
        via_file.n_users,
        len(via_file.users),
    )
    file_report, log_report = run_baselines(via_file, protocol), run_baselines(via_log, protocol)
    file_test, log_test = make_split(via_file, protocol, "test"), make_split(via_log, protocol, "test")
    print(
        format_table(
            f"file path: online_retail {protocol} ({len(file_test)} test cases)", file_report.test, file_test.modes
        )
    )
    print(
        format_table(
            f"log path: online_retail {protocol} ({len(log_test)} test cases)", log_report.test, log_test.modes
        )
    )
    assert abs(len(file_test) - len(log_test)) <= 1
    assert (file_report.knn_k, file_report.blend_a) == (log_report.knn_k, log_report.blend_a)
    one_case, one_list = 1.0 / min(len(file_test), len(log_test)) + 1e-9, 10.0 / via_file.n_items + 1e-9
    for model, per_mode in file_report.test.items():
        for mode, f in per_mode.items():
            g = log_report.test[model][mode]
            for name, bound in (("hr", one_case), ("ndcg", one_case), ("mrr", one_case), ("cov", one_list)):
                assert abs(getattr(f, name) - getattr(g, name)) <= bound, f"{model} {mode} {name}: file {f} vs log {g}"
