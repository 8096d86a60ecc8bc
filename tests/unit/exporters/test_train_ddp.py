"""Distributed data parallel on CPU: the retrain job started as 2 gloo processes (what
``torchrun --nproc_per_node=2 -m exporters.cli train`` does) trains one model, in step on both
ranks, and only rank 0 writes a version."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
WORKER = REPO / "tests" / "fixtures" / "ddp_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_one_model_and_rank_0_alone_writes_it(tmp_path: Path) -> None:
    root = tmp_path / "models"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = os.environ | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [sys.executable, str(WORKER), str(root), str(tmp_path / f"rank{rank}.json")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:  # a rank waiting for a step the other never takes
            for q in procs:
                q.kill()
            raise
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    # Each rank trained on its own half of every epoch's examples; the all-reduced gradients keep
    # the two copies equal (different shards without DDP would give different parameters).
    assert len(rank0["trained"]) == 1 and rank0["trained"] == rank1["trained"]
    assert rank0["world_size"] == 2 and rank0["parity_ok"]
    assert [e["epoch"] for e in rank0["epochs"]] == [0, 1, 2]
    assert "version" not in rank1
    assert [d.name for d in root.iterdir() if not d.name.startswith(".") and d.is_dir()] == ["ddp"]
