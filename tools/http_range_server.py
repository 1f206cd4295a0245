"""A tiny static HTTP server that honours Range requests and counts the bytes it sends.

Python's http.server ignores Range; tests of remote reads need a server that answers
`Range: bytes=a-b` with 206 Partial Content, so that "ls fetches only the index" can be
measured at the server. Binds to 127.0.0.1 only.

    with serve(root, latency=0.03) as server:   # ephemeral port, background thread, 30 ms per request
        server.url                       # "http://127.0.0.1:PORT"
        server.sent("/ckpt/model.ckpt.index")   # body bytes sent for that path (all requests)
        server.requests                  # [(method, path, range header or None, status, bytes sent)]
        server.reset()

    python tools/http_range_server.py ROOT [--port N] [--latency-ms 30]   # serve ROOT until interrupted

Requests are answered concurrently (one thread each), every one after `latency` seconds, as a
distant object store would: a client that keeps many requests in flight pays the latency once.

Supported: GET and HEAD; one range per request (`bytes=a-b`, `bytes=a-`, `bytes=-n`); 416 for an
unsatisfiable range; a multi-range request gets the whole file (200), as RFC 9110 allows.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import re
import threading
import time
import urllib.parse
from collections import defaultdict

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(start, end exclusive) for a single satisfiable range, None for no/ignored range, 'bad' for 416."""
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m:
        return None  # multi-range or another unit: ignore and send the whole file
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last n bytes
        n = int(last)
        if n == 0:
            return "bad"
        return max(0, size - n), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or end <= start:
        return "bad"
    return start, end


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus Range support and per-path byte counting."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real object stores do
    disable_nagle_algorithm = True  # headers and body go out in separate writes; don't wait 40 ms for an ACK

    def log_message(self, format, *args):  # noqa: A002 - quiet; the server records requests itself
        pass

    def send_head(self):
        self._range = None
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()  # directories (listing or redirect) and 404 as usual
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        wanted = parse_range(self.headers.get("Range"), size)
        if wanted == "bad":
            f.close()
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if wanted is None:
            self.send_response(200)
            start, end = 0, size
        else:
            start, end = wanted
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        self._range = (start, end)
        return f

    def send_response(self, code, message=None):
        self._status = int(code)
        super().send_response(code, message)

    def copyfile(self, source, outputfile):
        if self._range is None:  # a directory listing (in memory)
            data = source.read()
            outputfile.write(data)
            self._sent = len(data)
            return
        start, end = self._range
        # sendfile: the kernel copies file to socket, so the server's own CPU time does not become
        # what a benchmark of its clients measures
        sent = 0
        while sent < end - start:
            n = self.connection.sendfile(source, start + sent, end - start - sent)
            if not n:
                break
            sent += n
        self._sent = sent

    def _record(self, method: str) -> None:
        self._sent = 0
        self._status = None
        self.server.begin()
        if self.server.latency:
            time.sleep(self.server.latency)
        try:
            getattr(super(), f"do_{method}")()
        finally:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            self.server.record(method, path, self.headers.get("Range"), self._status, self._sent)

    def do_GET(self):
        self._record("GET")

    def do_HEAD(self):
        self._record("HEAD")


class RangeServer(http.server.ThreadingHTTPServer):
    """The server; `url`, `sent(path)`, `requests` and `reset()` are for tests."""

    daemon_threads = True
    request_queue_size = 128  # many clients connect at once; the default backlog of 5 would drop SYNs

    def __init__(self, root: str, port: int = 0, *, latency: float = 0.0):
        self.root = os.fspath(root)
        self.latency = latency  # seconds added before answering each request
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0  # requests being answered
        self._requests: list[tuple[str, str, str | None, int | None, int]] = []
        self._sent: dict[str, int] = defaultdict(int)

        def handler(*args, **kwargs):
            return RangeRequestHandler(*args, directory=self.root, **kwargs)

        super().__init__(("127.0.0.1", port), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def begin(self) -> None:
        with self._idle:
            self._active += 1

    def record(self, method, path, range_header, status, sent) -> None:
        with self._idle:
            self._requests.append((method, path, range_header, status, sent))
            self._sent[path] += sent
            self._active -= 1
            self._idle.notify_all()

    # A client can see a whole response before its handler has recorded it, so every reading of
    # the counts first waits (briefly) for the requests still being answered.

    def _settle(self, timeout: float = 5.0) -> None:
        self._idle.wait_for(lambda: self._active == 0, timeout)

    @property
    def requests(self) -> list[tuple[str, str, str | None, int | None, int]]:
        """(method, path, Range header, status, body bytes sent) of every request, in order."""
        with self._idle:
            self._settle()
            return list(self._requests)

    def sent(self, path: str | None = None) -> int:
        """Body bytes sent for one path (leading '/'), or in total."""
        with self._idle:
            self._settle()
            return sum(self._sent.values()) if path is None else self._sent.get(path, 0)

    def reset(self) -> None:
        """Forget what was counted."""
        with self._idle:
            self._settle()
            self._requests.clear()
            self._sent.clear()


@contextlib.contextmanager
def serve(root, *, latency: float = 0.0):
    """Run a RangeServer over root on 127.0.0.1 with an ephemeral port in a background thread;
    latency: seconds added to every request."""
    server = RangeServer(root, latency=latency)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    args = parser.parse_args(argv)
    server = RangeServer(args.root, args.port, latency=args.latency_ms / 1000)
    print(f"serving {args.root} at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
