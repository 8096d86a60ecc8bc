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
