"""Local process orchestration on a running stack: worker processes and simple topic I/O.

Used by the integration tests, the benchmarks and the demo tooling: a worker here is a real
OS process (so SIGKILL is a real crash), configured only through its environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devtools.stack import free_port


class WorkerProcess:
    """One ``streamrec-worker`` OS process (so SIGKILL is a real crash)."""

    module = "streamer.app"

    def __init__(self, stack, model_root: Path, state_dir: Path, *, app_id: str, topics: dict[str, str], **env: str):
        self.port = free_port()
        self.log = Path(state_dir).parent / f"worker-{Path(state_dir).name}.log"
        self.env = dict(
            os.environ,
            **stack.client_env(),
            STREAMREC_MODEL_ROOT=str(model_root),
            STREAMREC_STATE_DIR=str(state_dir),
            STREAMREC_APP_ID=app_id,
            STREAMREC_METRICS_PORT=str(self.port),
            STREAMREC_PARTITIONS="4",
            STREAMREC_MAX_WAIT_MS="20",
            STREAMREC_EVENTS_TOPIC=topics["events"],
            STREAMREC_ITEMS_TOPIC=topics["items"],
            STREAMREC_RECS_TOPIC=topics["recs"],
            STREAMREC_DLQ_TOPIC=topics["dlq"],
            STREAMREC_MODEL_UPDATES_TOPIC=topics["updates"],
            STREAMREC_REDIS_PREFIX=topics.get("prefix", "rec:"),
            STREAMREC_LOG_LEVEL="INFO",
        )
        self.env.update(env)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout} s:\n{self.tail()}")

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            return r.read().decode()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else 0


class ArchiverProcess(WorkerProcess):
    """One ``streamrec-archive`` OS process writing ``archive_dir``; the same start/kill/stop."""

    module = "streamer.archiver"

    def __init__(self, stack, archive_dir: Path, *, app_id: str, topics: dict[str, str], **env: str):
        self.port = free_port()
        self.log = Path(archive_dir).parent / f"archiver-{Path(archive_dir).name}.log"
        self.env = dict(
            os.environ,
            **stack.client_env(),
            STREAMREC_ARCHIVE_DIR=str(archive_dir),
            STREAMREC_APP_ID=app_id,
            STREAMREC_METRICS_PORT=str(self.port),
            STREAMREC_EVENTS_TOPIC=topics["events"],
            STREAMREC_ITEMS_TOPIC=topics["items"],
            STREAMREC_LOG_LEVEL="INFO",
        )
        self.env.update(env)
        self.proc = None


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await p.start()
    try:
        for key, value in messages:
            await p.send(topic, value, key=key)
        await p.flush()
    finally:
        await p.stop()


async def read_all(
    bootstrap: str, topic: str, expect: int | None = None, timeout: float = 30, idle: float = 2.0
) -> list:
    """Every message of ``topic`` from the beginning: until ``expect`` messages arrived, or until
    nothing new came for ``idle`` seconds (end offsets are not trusted: see LocalStack.client_env)."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    out = []
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=200)
            for msgs in batch.values():
                out.extend(msgs)
                last_new = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - last_new > idle:
                break
    finally:
        await c.stop()
    return out
