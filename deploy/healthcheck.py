#!/usr/bin/env python3
"""Container health probe for the streamrec worker (standard library only).

Installed in the worker images as ``/usr/local/bin/streamrec-healthcheck`` and used by the
image's HEALTHCHECK (``healthz``) and by docker-compose.yml's worker healthcheck (``readyz``).

    streamrec-healthcheck healthz   # liveness: the process serves HTTP and its loop is alive
    streamrec-healthcheck readyz    # readiness: model loaded, partitions assigned and restored

The port is STREAMREC_METRICS_PORT (default 9108), the same port that serves /metrics.
Exit status 0 when the endpoint answers 2xx within the timeout, 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

ENDPOINTS = ("healthz", "readyz")
DEFAULT_PORT = 9108


def probe(endpoint: str, port: int, timeout: float = 3.0) -> tuple[bool, str]:
    url = f"http://127.0.0.1:{port}/{endpoint}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed loopback URL)
            body = resp.read(512).decode("utf-8", "replace").strip()
            return 200 <= resp.status < 300, f"{url} -> {resp.status} {body}"
    except urllib.error.HTTPError as exc:
        body = exc.read(512).decode("utf-8", "replace").strip() if exc.fp else ""
        return False, f"{url} -> {exc.code} {body}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} -> {exc}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    endpoint = args[0] if args else "healthz"
    if endpoint not in ENDPOINTS:
        print(f"usage: streamrec-healthcheck [{'|'.join(ENDPOINTS)}]", file=sys.stderr)
        return 2
    raw_port = os.environ.get("STREAMREC_METRICS_PORT", "") or str(DEFAULT_PORT)
    try:
        port = int(raw_port)
    except ValueError:
        print(f"STREAMREC_METRICS_PORT is not a port number: {raw_port!r}", file=sys.stderr)
        return 1
    ok, detail = probe(endpoint, port)
    print(detail)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
