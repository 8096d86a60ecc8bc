"""deploy/healthcheck.py: the container probe of /healthz and /readyz."""

from __future__ import annotations

import http.server
import threading

from deploy import healthcheck


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        code = 200 if self.path == "/healthz" else 503
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"not ready")

    def log_message(self, *args):
        pass


def test_healthcheck_probe(monkeypatch, capsys):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("STREAMREC_METRICS_PORT", str(server.server_address[1]))
        assert healthcheck.main(["healthz"]) == 0
        assert healthcheck.main(["readyz"]) == 1
        assert "503" in capsys.readouterr().out
        assert healthcheck.main(["bogus"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv("STREAMREC_METRICS_PORT", str(server.server_address[1]))
    assert healthcheck.main(["healthz"]) == 1  # nothing listens any more
