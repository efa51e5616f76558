"""A real HTTP(S) server on loopback in a thread of its own, for the peers a test plays (a bank's TLS endpoint,
an OTLP collector)."""

from __future__ import annotations

import http.server
import ssl
import threading


class LoopbackServer:
    """``handler`` served on 127.0.0.1 (a free port); HTTPS when given a server-side SSL context."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler],
                 context: ssl.SSLContext | None = None) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
