"""A real HTTP server on 127.0.0.1 for the hub / download tests: files at paths, Hugging Face hub repositories, and
faults (status codes, connections cut mid-body, bodies held until released). Nothing here reaches the internet.

The server counts every request, answers at most `max_requests` (then 503) and shuts itself down after
`max_seconds`, so a test that goes wrong cannot leave it running.

Hub layout (the protocol huggingface_hub speaks; ../shared/reference/mask2former.md section 10):
HEAD/GET /<org>/<name>/resolve/<main|commit>/<file> -> 200 with X-Repo-Commit, ETag "<sha256>", Content-Length;
a missing file -> 404 X-Error-Code: EntryNotFound (+ X-Repo-Commit); an unknown repo -> 404 RepoNotFound; an
unknown revision -> 404 RevisionNotFound; anything else (e.g. /api/...) -> 404.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """What one path serves. cut_after / cut_times: send only that many body bytes, then drop the connection, for
    the next `cut_times` GETs. gate: the body waits until this event is set (bounded by the server's lifetime)."""

    data: bytes = b""
    status: int = 200
    headers: dict = field(default_factory=dict)
    cut_after: int | None = None
    cut_times: int = 0
    gate: threading.Event | None = None


@dataclass
class Seen:
    method: str
    path: str
    headers: dict


class LoopbackServer:
    def __init__(self, *, max_requests: int = 200, max_seconds: float = 120.0):
        self.routes: dict[str, Route] = {}
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}  # repo id -> (commit, files)
        self.repo_status: dict[str, int] = {}  # repo id -> forced status (e.g. 500)
        self.requests: list[Seen] = []
        self.max_requests = max_requests
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timer = threading.Timer(max_seconds, self.close)
        self._timer.daemon = True
        self._closed = False

    # ------------------------------------------------------------------ set-up
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes = b"", **kw) -> str:
        """Serve `data` at `path` (Route keywords for faults); returns the full URL."""
        self.routes[path] = Route(data=data, **kw)
        return self.url(path)

    def add_hub_repo(self, repo_id: str, files: dict[str, bytes], commit: str | None = None) -> str:
        """Serve a hub repository holding `files` at revision main and at its commit; returns the commit."""
        commit = commit or hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[repo_id] = (commit, dict(files))
        return commit

    def count(self, path_part: str = "", method: str | None = None) -> int:
        with self._lock:
            return sum(path_part in r.path and (method is None or r.method == method) for r in self.requests)

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._timer.cancel()
        for route in self.routes.values():
            if route.gate is not None:
                route.gate.set()
        threading.Thread(target=self._server.shutdown, daemon=True).start()
        self._server.server_close()

    # ------------------------------------------------------------------ answering
    def _record(self, handler: BaseHTTPRequestHandler) -> bool:
        with self._lock:
            self.requests.append(Seen(handler.command, handler.path, dict(handler.headers)))
            return len(self.requests) <= self.max_requests

    def _hub_route(self, path: str) -> Route | None:
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if not m:
            return None
        repo, rev, name = m.groups()
        if repo in self.repo_status:
            return Route(status=self.repo_status[repo])
        if repo not in self.repos:
            return Route(status=404, headers={"X-Error-Code": "RepoNotFound"})
        commit, files = self.repos[repo]
        if rev not in ("main", commit):
            return Route(status=404, headers={"X-Error-Code": "RevisionNotFound"})
        if name not in files:
            return Route(status=404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        data = files[name]
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        return Route(data=data, headers={"X-Repo-Commit": commit, "ETag": etag})


def _handler(server: LoopbackServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            if not server._record(self):
                return self._send(503, b"request limit reached", body)
            path = self.path.split("?")[0]
            route = server.routes.get(path) or server._hub_route(path) or Route(status=404)
            if route.status != 200:
                return self._send(route.status, b"", body, route.headers)
            start = _range_start(self.headers.get("Range"))
            data, status, headers = route.data, 200, dict(route.headers)
            if start is not None and start < len(data):
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                data, status = data[start:], 206
            elif start is not None:
                return self._send(416, b"", body, {"Content-Range": f"bytes */{len(data)}"})
            cut = None
            if body and route.cut_times > 0:
                route.cut_times -= 1
                cut = route.cut_after
            if body and route.gate is not None:
                route.gate.wait(timeout=60)
            self._send(status, data, body, headers, cut=cut)

        def _send(self, status: int, data: bytes, body: bool, headers: dict | None = None, cut=None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not body:
                return
            try:
                self.wfile.write(data if cut is None else data[:cut])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            if cut is not None:  # drop the connection mid-body
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    return Handler


def _range_start(value: str | None) -> int | None:
    m = re.match(r"^bytes=(\d+)-$", value or "")
    return int(m.group(1)) if m else None


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (for connection-refused tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
