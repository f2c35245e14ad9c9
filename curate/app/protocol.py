"""uvicorn's HTTP/1.1 protocol (h11) with the review page's rule for malformed requests:
a JSON error the page and a script can read, and nothing on the server's stderr.

uvicorn answers bytes h11 cannot parse (a Content-Length that is not a number, or
negative, or given twice with two values...) itself, before any route or the guard sees
them: in text/plain, chunked, and with a warning on stderr each time. Here that answer is
`{"ok": false, "error": ...}` with a Content-Length, and the connection is closed.

A client that promises more body than it sends and then half-closes its side would keep
its request waiting forever: the end of its stream is fed to h11, which calls that a
malformed request (the 400 above), and the waiting handler sees the client gone.
"""

from __future__ import annotations

import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# uvicorn's protocol logs a client's malformed bytes as a warning: the client is told, the
# terminal need not be. Errors still reach stderr.
_LOG = logging.getLogger("curate.app.http")
_LOG.setLevel(logging.ERROR)
# Sent with every answer, the malformed-request one included: the page loads nothing from elsewhere
# and may not be framed or sniffed.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; img-src 'self'; script-src 'self'; style-src 'self'; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
MALFORMED = ("malformed HTTP request: a Content-Length that is not one non-negative number, a body shorter "
             "than its Content-Length, or a bad request line or header")


class JsonErrorsProtocol(H11Protocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logger = _LOG

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"ok": False, "error": MALFORMED}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), (b"connection", b"close"), *SECURITY_HEADERS]
        try:
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # a reply had already begun: nothing more can be said on this connection
            pass
        self.transport.close()

    def eof_received(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete and self.conn.their_state is h11.SEND_BODY:
            self.conn.receive_data(b"")   # the body will never be complete: h11 raises, handle_events answers
            self.handle_events()
