"""Console logging for the job's CLIs: our INFO lines, only warnings from the libraries.

onnxruntime's transformer optimizer logs every fusion at INFO under bare module names
(``fusion_base``, ``onnx_model``...), which would drown the job's own progress lines.
"""

from __future__ import annotations

import logging


class _OursOrWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith(("exporters", "__main__"))


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_OursOrWarnings())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


class Heartbeat:
    """A progress line every ``every_s`` seconds from a background thread, whether or not the
    output is a terminal (tqdm bars hide themselves in a log file): the current stage, time in
    it, total time and peak RSS. ``stage(name)`` switches the stage; use as a context manager."""

    def __init__(self, every_s: float = 60.0, logger: logging.Logger | None = None):
        import threading

        self.every_s = every_s
        self.log = logger or logging.getLogger("exporters.progress")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._name = "start"
        self._t0 = self._stage_t0 = 0.0

    def stage(self, name: str) -> None:
        import time

        self._name, self._stage_t0 = name, time.monotonic()

    def _run(self) -> None:
        import resource
        import time

        while not self._stop.wait(self.every_s):
            now = time.monotonic()
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.log.info(
                "progress: %s for %.0fs (total %.0fs, peak RSS %.0f MiB)",
                self._name,
                now - self._stage_t0,
                now - self._t0,
                rss,
            )

    def __enter__(self) -> "Heartbeat":
        import time

        self._t0 = self._stage_t0 = time.monotonic()
        if self.every_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
