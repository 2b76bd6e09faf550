"""A local stand-in for the Hugging Face hub (and any plain HTTP host) for the download tests.

It answers what `huggingface_hub.hf_hub_download` asks of the real hub, on 127.0.0.1 at a free port, in a thread:
HEAD and GET of `/{repo_id}/resolve/{revision}/{path}` (models) and `/datasets/{repo_id}/resolve/...` with
`X-Repo-Commit`, an `ETag` (the quoted sha256 for LFS-like files, the git blob sha1 otherwise, as the hub does),
an exact `Content-Length`, and `Range` requests. It sends no Xet headers, so the client takes its plain HTTP path.
Plain URLs (e.g. the Gutenberg text) are served from `add_url`.

Faults, each switched on by a test: `cut_once(path)` stops the body halfway the first time it is sent,
`corrupt(path)` serves bytes that do not match the ETag, `missing(path)` answers 404, `stop()` takes the server down.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+|[^/]+)/resolve/(?P<rev>[^/]+)/"
                      r"(?P<path>.+)$")


@dataclass
class _File:
    data: bytes
    etag: str


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the hub's ETag) gives a small, non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Serve hub repos and plain URLs from memory; `url` is the endpoint to put in HF_ENDPOINT."""

    def __init__(self) -> None:
        self.files: dict[str, _File] = {}  # request path (revision replaced by "{rev}") -> file
        self.commits: dict[str, str] = {}  # "datasets/owner/name" or "owner/name" -> commit hash
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._cut: set[str] = set()
        self._corrupt: set[str] = set()
        self._missing: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    # ---- content -------------------------------------------------------------------------------------
    def add_repo_file(self, repo_id: str, path: str, data: bytes, repo_type: str = "model",
                      lfs: bool = False) -> str:
        """Serve `data` as `path` of a repo; returns the request path used by the faults."""
        prefix = repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"
        self.commits.setdefault(prefix, FAKE_COMMIT)
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        key = f"/{prefix}/resolve/{{rev}}/{path}"
        self.files[key] = _File(data, etag)
        return key

    def add_url(self, path: str, data: bytes) -> str:
        """Serve `data` at a plain URL path such as `/cache/epub/1041/pg1041.txt`."""
        self.files[path] = _File(data, hashlib.sha256(data).hexdigest())
        return path

    # ---- faults --------------------------------------------------------------------------------------
    def cut_once(self, key: str) -> None:
        self._cut.add(key)

    def corrupt(self, key: str) -> None:
        self._corrupt.add(key)

    def missing(self, key: str) -> None:
        self._missing.add(key)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- serving -------------------------------------------------------------------------------------
    def _lookup(self, path: str) -> tuple[str | None, _File | None, str | None]:
        """(fault key, file, commit) for a request path; commit None for plain URLs."""
        if path in self.files:
            return path, self.files[path], None
        m = _RESOLVE.match(path)
        if not m:
            return None, None, None
        prefix = m["repo"] if not m["type"] else f"{m['type']}/{m['repo']}"
        commit = self.commits.get(prefix)
        if commit is None or m["rev"] not in {"main", commit}:
            return None, None, None
        key = f"/{prefix}/resolve/{{rev}}/{m['path']}"
        return key, self.files.get(key), commit

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = h.path.split("?", 1)[0]
        rng = h.headers.get("Range")
        self.requests.append((h.command, path, rng))
        key, f, commit = self._lookup(path)
        if f is None or key in self._missing:
            h.send_response(404)
            h.send_header("X-Error-Code", "EntryNotFound")
            h.send_header("X-Error-Message", "Entry not found")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        data = f.data
        if key in self._corrupt:  # same length, same ETag, wrong bytes
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            start = int(m[1]) if m else 0
        part = data[start:]
        h.send_response(206 if start else 200)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("ETag", f'"{f.etag}"')
        h.send_header("Content-Length", str(len(part)))
        h.send_header("Accept-Ranges", "bytes")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return
        if key in self._cut and len(part) > 1:
            self._cut.discard(key)
            h.wfile.write(part[: len(part) // 2])
            h.wfile.flush()
            h.close_connection = True
            # Drop the socket now: the client sees a body shorter than Content-Length.
            h.connection.shutdown(2)
            return
        h.wfile.write(part)


def point_client_at(hub: FakeHub, monkeypatch, cache) -> None:
    """Aim minigpt2.download and huggingface_hub at `hub`, online, with an empty cache under `cache`.

    CI sets HF_HUB_OFFLINE=1, and huggingface_hub copies that into `constants` when it is imported, so both the
    environment and the constant are switched back here (and restored by monkeypatch afterwards). The endpoint needs
    no patching of `constants`: minigpt2.download reads HF_ENDPOINT at call time and passes it to the client.
    """
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(cache / "hf_home"))  # nothing of the user's own hub cache is touched
    monkeypatch.setenv("MINIGPT2_CACHE", str(cache / "minigpt2"))
