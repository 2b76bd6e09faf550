"""A local fake of the Gemini REST API (127.0.0.1, in a thread) for driving the real google-genai SDK in tests.

Speaks the shapes the SDK expects:
- `GET  /v1beta/models/{model}`                  -> a Model resource (what `client.models.get` reads);
- `POST /v1beta/models/{model}:generateContent`  -> candidates[].content.parts[].text (with one thought part),
  finishReason, usageMetadata (promptTokenCount, candidatesTokenCount, thoughtsTokenCount, totalTokenCount).
Keys are checked like Google does: a key outside `valid_keys` gets 400 INVALID_ARGUMENT / API_KEY_INVALID.

`script` lists what the next generateContent calls get, one item each, then "ok" forever:
"ok", "429", "500", "503", "401", "403", "empty" (a candidate with no text), "blocked" (promptFeedback
blockReason SAFETY), "safety" (finishReason SAFETY), "malformed" (HTTP 200 with broken JSON), "leak"
(recites `leak_text`), "dup" (repeats the previous answer), "imperfect" (a sonnet whose couplet does not rhyme).
Answers are sonnets built from the request's seed, so different seeds give different, non-duplicate sonnets;
seeds divisible by 5 give an imperfect one, so a run has a perfect rate below 100%.

Per request, keyed by the seed in its generationConfig (`distill.generate` with --seed 0 sends seed = index):
`delays` {seed: seconds} holds that answer back (answers then arrive out of order), and `faults` {seed: item}
overrides the script for it; the extra item "as:K" answers with the sonnet of seed K (an exact copy that does
not depend on arrival order, unlike "dup"). `retry_after` (a header value, seconds or an HTTP date) is sent with
every scripted 429/500/503, and `retry_delay` (e.g. "3s") as Google's RetryInfo detail in their body.

`trickle_s` sends every generateContent answer (status line and headers included) one byte at a time, that
many seconds apart: a server that is never silent long enough for a read time-out, and never done.

`BlackHole` is a port that accepts connections and never answers.
"""
from __future__ import annotations

import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RHYMES = [
    ["day", "way", "stay", "play", "gray"], ["night", "light", "bright", "sight"], ["heart", "art", "part", "start"],
    ["sea", "free", "thee", "me"], ["love", "above", "dove"], ["time", "rhyme", "climb", "prime"],
    ["sky", "high", "eye", "fly"], ["rain", "pain", "plain", "vain"], ["song", "long", "strong", "along"],
    ["fire", "desire", "entire"], ["gold", "old", "cold", "bold", "told"], ["moon", "soon", "tune", "noon"],
    ["snow", "grow", "slow", "know"], ["stone", "alone", "known", "own"], ["breath", "death"],
    ["tears", "years", "fears"], ["mind", "kind", "find", "blind"], ["shore", "more", "before", "door"],
    ["grace", "face", "place", "space"],
]
FILLER = ("amber willow quiet river hollow silver morning ancient tender distant golden wandering evening"
          " patient gentle shadow meadow crimson lantern harbor whisper summer winter autumn spring garden"
          " orchard candle feather ember velvet marble thunder valley mountain forest heather linen copper"
          " sparrow raven falcon lily rose ivy thistle clover bramble cedar maple birch aspen hazel juniper"
          " cobalt saffron scarlet ochre violet indigo ivory pewter granite quartz coral pearl").split()
VALID_KEY = "test-key"


def make_sonnet(seed: int, perfect: bool = True) -> str:
    """A 14-line ABAB CDCD EFEF GG sonnet from a seed; perfect=False breaks the couplet."""
    rng = random.Random(seed)
    groups = rng.sample(RHYMES, 7)
    ends = []
    for quatrain in range(3):
        a, b = rng.sample(groups[2 * quatrain], 2), rng.sample(groups[2 * quatrain + 1], 2)
        ends += [a[0], b[0], a[1], b[1]]
    ends += rng.sample(groups[6], 2)
    if not perfect:
        ends[-1] = "orange"
    return "\n".join(" ".join(rng.sample(FILLER, 7) + [end]) + ("," if i % 2 == 0 else ".")
                     for i, end in enumerate(ends))


class FakeGemini:
    """Run with `with FakeGemini(script=[...]) as fake:` and point the SDK at `fake.url`."""

    def __init__(self, script: list[str] | None = None, valid_keys: tuple[str, ...] = (VALID_KEY,),
                 delay_s: float = 0.0, leak_text: str = "", models: tuple[str, ...] | None = None,
                 delays: dict[int, float] | None = None, faults: dict[int, str] | None = None,
                 retry_after: str | None = None, retry_delay: str | None = None, trickle_s: float = 0.0) -> None:
        self.trickle_s = trickle_s
        self._stopped = threading.Event()
        self.script = list(script or [])
        self.delays, self.faults = dict(delays or {}), dict(faults or {})
        self.retry_after, self.retry_delay = retry_after, retry_delay
        self.valid_keys = valid_keys
        self.delay_s = delay_s
        self.leak_text = leak_text
        self.models = models  # None: every model name exists
        self.requests: list[dict] = []  # {"method", "path", "body"} (never the key)
        self.answered: list[int] = []  # seeds of the generateContent requests answered, in the order answered
        self.keys_seen: list[str] = []
        self._lock = threading.Lock()
        self._last_text = make_sonnet(0)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeGemini":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()  # ends any trickle
        self._server.shutdown()
        self._server.server_close()

    def generate_calls(self) -> list[dict]:
        return [r for r in self.requests if r["path"].endswith(":generateContent")]

    def _next_fault(self) -> str:
        with self._lock:
            return self.script.pop(0) if self.script else "ok"

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _send(self, status: int, payload: dict | str, headers: dict[str, str] | None = None) -> None:
                body = payload if isinstance(payload, str) else json.dumps(payload)
                data = body.encode()
                if fake.trickle_s and self.command == "POST":
                    return self._trickle(status, data)
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _trickle(self, status: int, data: bytes) -> None:
                raw = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json; charset=UTF-8\r\n"
                       f"Content-Length: {len(data)}\r\n\r\n").encode() + data
                self.close_connection = True
                for i in range(len(raw)):
                    if fake._stopped.wait(fake.trickle_s):
                        return
                    try:
                        self.wfile.write(raw[i:i + 1])
                        self.wfile.flush()
                    except OSError:  # the client gave up and closed the connection
                        return

            def _error(self, code: int, status: str, message: str, reason: str | None = None,
                       retry: bool = False) -> None:
                err = {"code": code, "message": message, "status": status}
                if reason:
                    err["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                                       "domain": "googleapis.com"}]
                if retry and fake.retry_delay:
                    err["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                       "retryDelay": fake.retry_delay}]
                headers = {"Retry-After": fake.retry_after} if retry and fake.retry_after else None
                self._send(code, {"error": err}, headers)

            def _authorized(self) -> bool:
                key = self.headers.get("x-goog-api-key", "")
                with fake._lock:
                    fake.keys_seen.append(key)
                if key in fake.valid_keys:
                    return True
                self._error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                            "API_KEY_INVALID")
                return False

            def _model(self) -> str | None:
                if not self.path.startswith("/v1beta/models/"):
                    self._error(404, "NOT_FOUND", f"no such path {self.path}")
                    return None
                name = self.path.split("?")[0].split("/models/", 1)[-1].split(":")[0]
                if fake.models is not None and name not in fake.models:
                    self._error(404, "NOT_FOUND", f"models/{name} is not found for API version v1beta")
                    return None
                return name

            def do_GET(self) -> None:
                with fake._lock:
                    fake.requests.append({"method": "GET", "path": self.path, "body": None})
                model = self._model() if self._authorized() else None
                if model is not None:
                    self._send(200, {"name": f"models/{model}", "displayName": model,
                                     "supportedGenerationMethods": ["generateContent"]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake._lock:
                    fake.requests.append({"method": "POST", "path": self.path, "body": body})
                seed = body.get("generationConfig", {}).get("seed", 0)
                if fake.delay_s or seed in fake.delays:
                    time.sleep(fake.delays.get(seed, fake.delay_s))
                if not self._authorized() or self._model() is None:
                    return
                fault = fake.faults[seed] if seed in fake.faults else fake._next_fault()
                if fault in ("429", "500", "503"):
                    status = {"429": "RESOURCE_EXHAUSTED", "500": "INTERNAL", "503": "UNAVAILABLE"}[fault]
                    return self._error(int(fault), status, f"scripted {fault}", retry=True)
                if fault in ("401", "403"):
                    return self._error(int(fault), "UNAUTHENTICATED" if fault == "401" else "PERMISSION_DENIED",
                                       "scripted key rejection")
                if fault == "malformed":
                    return self._send(200, '{"candidates": [{"content": {"parts": [{"text": "Shall I')
                prompt = body["contents"][0]["parts"][0]["text"]
                usage = {"promptTokenCount": len(prompt.split()), "thoughtsTokenCount": 7}
                if fault == "blocked":
                    usage["totalTokenCount"] = usage["promptTokenCount"]
                    return self._send(200, {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage})
                text = {"leak": fake.leak_text, "dup": fake._last_text, "empty": ""}.get(fault)
                if fault.startswith("as:"):
                    text = make_sonnet(int(fault[3:]))
                if text is None:
                    text = make_sonnet(seed, perfect=fault != "imperfect" and seed % 5 != 0)
                fake._last_text = text or fake._last_text
                parts = [{"text": "Planning the quatrains first.", "thought": True}]
                if text:
                    parts.append({"text": text})
                usage["candidatesTokenCount"] = len(text.split())
                usage["totalTokenCount"] = sum(usage.values())
                finish = "SAFETY" if fault == "safety" else "STOP"
                self._send(200, {"candidates": [{"content": {"role": "model", "parts": parts},
                                                 "finishReason": finish, "index": 0}],
                                 "usageMetadata": usage, "modelVersion": "fake"})
                with fake._lock:
                    fake.answered.append(seed)

        return Handler


class BlackHole:
    """A local port that accepts connections and never answers (a hung server or a stuck proxy).

    `with BlackHole() as hole:` then aim a client at `hole.url`; the accepted sockets are held open until exit.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:  # the 0.1 s poll, or the socket closed on exit
                continue
            self._held.append(conn)

    def __enter__(self) -> "BlackHole":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._sock.close()
