"""minigpt2.download pinned where one-line slips show: URLs, settings read from the environment, checksums against
`hashlib` and `git hash-object` as referees, the lock file's bytes, every refusal's and offline line whole, and plain
HTTP transfers (resume, a server that ignores `Range`, one that always cuts off) against tests/fakehub.py or a
scripted server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from minigpt2 import download
from minigpt2.download import ChecksumError, DownloadError, HubFile, fetch_hub_file, fetch_url
from tests.fakehub import FAKE_COMMIT, FakeHub

REV, SHA = download._GPT2_PINNED["gpt2"]
CONFIG = b'{"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2}\n'


# ---- names, URLs and settings -----------------------------------------------------------------------------------
def test_hub_file_keys_and_urls(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    m = HubFile("org/name", "a/b.json")
    assert m.key == "model:org/name/a/b.json"
    assert m.url() == "https://huggingface.co/org/name/resolve/main/a/b.json"
    assert m.url("abc", "http://h:1") == "http://h:1/org/name/resolve/abc/a/b.json"
    d = HubFile("SetFit/sst5", "dev.jsonl", repo_type="dataset", revision="r1")
    assert d.key == "dataset:SetFit/sst5/dev.jsonl"
    assert d.url() == "https://huggingface.co/datasets/SetFit/sst5/resolve/r1/dev.jsonl"
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror:8/")  # read at call time, trailing slash dropped
    assert download.hub_endpoint() == "http://mirror:8"
    assert d.url() == "http://mirror:8/datasets/SetFit/sst5/resolve/r1/dev.jsonl"
    monkeypatch.setenv("HF_ENDPOINT", "http://X//")  # only slashes are stripped
    assert download.hub_endpoint() == "http://X"


def test_gpt2_files_pin_only_124m():
    config, weights = download.gpt2_files("gpt2")
    assert config == HubFile("openai-community/gpt2", "config.json", revision=REV)
    assert weights == HubFile("openai-community/gpt2", "model.safetensors", revision=REV, sha256=SHA)
    assert REV == "607a30d783dfa663caf39e06633721c8d4cfcd7e"
    assert SHA == "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"
    for name in ("gpt2-medium", "gpt2-large", "gpt2-xl"):
        assert download.gpt2_files(name) == (HubFile(f"openai-community/{name}", "config.json"),
                                             HubFile(f"openai-community/{name}", "model.safetensors"))
    for name in ("tiny", "gpt3", "GPT2"):
        with pytest.raises(ValueError) as e:
            download.gpt2_files(name)
        assert str(e.value) == f"no GPT-2 weights named {name!r} (gpt2, gpt2-medium, gpt2-large, gpt2-xl)"


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), (" TRUE ", True), ("Yes", True),
                                            ("on", True), ("0", False), ("", False), ("off", False),
                                            ("no", False), ("2", False)])
def test_env_offline_values(monkeypatch, value, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert download.env_offline() is offline


def test_env_offline_unset_and_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert download.env_offline() is False
    monkeypatch.setenv("MINIGPT2_CACHE", str(tmp_path / "c"))
    assert download.cache_dir() == tmp_path / "c"
    monkeypatch.setenv("MINIGPT2_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert download.cache_dir() == tmp_path / "home" / ".cache" / "minigpt2"
    monkeypatch.delenv("MINIGPT2_CACHE")
    assert download.cache_dir() == tmp_path / "home" / ".cache" / "minigpt2"


# ---- checksums and the lock ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 5, (1 << 20) - 1, 1 << 20, (1 << 20) + 3, 3 * (1 << 20) + 1])
def test_checksums_match_hashlib_and_git(tmp_path, size):
    data = bytes((i * 7 + i // 256) % 256 for i in range(size))
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    assert download.sha256_file(f) == hashlib.sha256(data).hexdigest()
    blob = hashlib.sha1(f"blob {size}\0".encode() + data).hexdigest()
    assert download.git_blob_sha1(str(f)) == blob
    if shutil.which("git") and size < 10:  # git itself as the referee for the blob id
        assert subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True,
                              check=True).stdout.strip() == blob


def test_lock_file_bytes_and_no_rewrite_of_the_same_entry(tmp_path):
    path = tmp_path / "lock.json"
    lock = download.Lock(path)
    assert lock.entries == {} and lock.get("x") == {}
    lock.record("z:b", sha256="s2", revision="r2")
    lock.record("a:b", sha256="s1")
    assert path.read_text() == ('{\n  "a:b": {\n    "sha256": "s1"\n  },\n  "z:b": {\n    "revision": "r2",\n'
                                '    "sha256": "s2"\n  }\n}\n')
    again = download.Lock(path)
    assert again.get("z:b") == {"sha256": "s2", "revision": "r2"} and again.get("q") == {}
    path.unlink()
    again.record("a:b", sha256="s1")  # the same fields: nothing written
    assert not path.exists()
    again.record("a:b", sha256="s3")
    assert json.loads(path.read_text())["a:b"] == {"sha256": "s3"}


def test_by_hand_lines():
    assert download._by_hand("http://u", Path("/x/f"), None) == (
        "To place it by hand: download http://u on a machine with internet, copy it to /x/f.")
    assert download._by_hand("http://u", Path("/x/f"), "ab") == (
        "To place it by hand: download http://u on a machine with internet, copy it to /x/f and check `sha256sum` "
        "prints ab.")


def test_network_errors_of_the_installed_clients():
    errors = download._network_errors()
    assert errors[0] is OSError
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            cls = getattr(__import__(module), name)
        except ImportError:
            continue
        assert cls in errors, (module, name)


def test_remove_deletes_a_link_and_its_blob(tmp_path):
    blob = tmp_path / "blobs" / "abc"
    blob.parent.mkdir()
    blob.write_bytes(b"x")
    link = tmp_path / "snap" / "f"
    link.parent.mkdir()
    link.symlink_to(blob)
    download._remove(link)
    assert not link.exists() and not link.is_symlink() and not blob.exists()
    plain = tmp_path / "p"
    plain.write_bytes(b"y")
    download._remove(plain)
    download._remove(plain)  # already gone: fine
    assert not plain.exists()
    dangling = tmp_path / "d"
    dangling.symlink_to(tmp_path / "nothing")
    download._remove(dangling)
    assert not dangling.is_symlink()


def test_verify_against_pin_etag_and_blob(tmp_path):
    data = b"hello\n"
    sha, blob = hashlib.sha256(data).hexdigest(), hashlib.sha1(b"blob 6\0" + data).hexdigest()
    f = tmp_path / "f"
    where = tmp_path / "w"

    def fresh() -> Path:
        f.write_bytes(data)
        return f

    assert download._verify(fresh(), sha, None, "src", "http://u", where) == sha
    assert download._verify(fresh(), None, sha, "src", "http://u", where) == sha  # LFS ETag is the sha256
    assert download._verify(fresh(), None, blob, "src", "http://u", where) == sha  # git blob ETag
    assert download._verify(fresh(), None, "W/xyz", "src", "http://u", where) == sha  # unknown ETag: no check
    assert download._verify(fresh(), None, "", "src", "http://u", where) == sha
    assert download._verify(fresh(), sha, "0" * 40, "src", "http://u", where) == sha  # a pin wins over the ETag
    assert download._verify(fresh(), None, sha.upper(), "src", "http://u", where) == sha  # not lowercase hex
    assert download._verify(fresh(), None, blob + "0", "src", "http://u", where) == sha  # 41 hex: neither

    bad = "1" * 64
    for expected, etag in ((bad, None), (None, bad), (bad, blob)):
        with pytest.raises(ChecksumError) as e:
            download._verify(fresh(), expected, etag, "src", "http://u", where)
        assert str(e.value) == (f"src: checksum mismatch, expected sha256 {bad} but got {sha}; the file was deleted. "
                                f"Run the command again to re-download. If it keeps failing: To place it by hand: "
                                f"download http://u on a machine with internet, copy it to {where} and check "
                                f"`sha256sum` prints {bad}.")
        assert not f.exists()
    with pytest.raises(ChecksumError) as e:
        download._verify(fresh(), None, "2" * 40, "src", "http://u", where)
    assert str(e.value) == (f"src: checksum mismatch, the hub publishes git blob id {'2' * 40} but the downloaded "
                            f"file has {blob}; the file was deleted. Run the command again.")
    assert not f.exists()


# ---- hub files ------------------------------------------------------------------------------------------------------
def test_offline_hub_file_line_with_and_without_the_environment(hub, tmp_path, monkeypatch):
    f = HubFile("org/m", "model.safetensors", revision=FAKE_COMMIT, sha256="ab" * 32)
    cache = tmp_path / "c"
    with pytest.raises(DownloadError) as e:
        fetch_hub_file(f, cache=cache, offline=True)
    assert str(e.value) == (f"org/m/model.safetensors is not here and downloads are off (offline mode). To place it "
                            f"by hand: download https://huggingface.co/org/m/resolve/{FAKE_COMMIT}/model.safetensors "
                            f"on a machine with internet, copy it to {cache / 'hub' / 'model.safetensors'} and check "
                            f"`sha256sum` prints {'ab' * 32}.")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = HubFile("org/d", "x.txt", repo_type="dataset")
    with pytest.raises(DownloadError) as e:
        fetch_hub_file(d, local_dir=tmp_path / "here")
    assert str(e.value) == ("org/d/x.txt is not here and downloads are off (offline mode, HF_HUB_OFFLINE=1). To place "
                            "it by hand: download https://huggingface.co/datasets/org/d/resolve/main/x.txt on a "
                            f"machine with internet, copy it to {tmp_path / 'here' / 'x.txt'}.")
    assert hub.requests == []


def test_hub_file_online_then_offline_from_the_cache_then_a_locked_revision(hub, tmp_path):
    hub.add_repo_file("org/m", "config.json", CONFIG)
    f = HubFile("org/m", "config.json")
    got = fetch_hub_file(f)
    assert got.read_bytes() == CONFIG
    assert str(got).startswith(str(tmp_path / "cache" / "minigpt2" / "hub"))
    lock = json.loads((tmp_path / "cache" / "minigpt2" / "lock.json").read_text())
    assert lock == {"model:org/m/config.json": {"revision": FAKE_COMMIT,
                                                "sha256": hashlib.sha256(CONFIG).hexdigest()}}
    hub.requests.clear()
    assert fetch_hub_file(f, offline=True) == got and hub.requests == []  # from the cache, checked, no network
    got.write_bytes(b"changed on disk")  # offline, the lock's sha256 still checks the cached copy
    sha = hashlib.sha256(CONFIG).hexdigest()
    with pytest.raises(ChecksumError) as e:
        fetch_hub_file(f, offline=True)
    assert str(e.value) == (f"org/m/config.json: checksum mismatch, expected sha256 {sha} but got "
                            f"{hashlib.sha256(b'changed on disk').hexdigest()}; the file was deleted. Run the command "
                            f"again to re-download. If it keeps failing: To place it by hand: download "
                            f"https://huggingface.co/org/m/resolve/{FAKE_COMMIT}/config.json on a machine with "
                            f"internet, copy it to {tmp_path / 'cache' / 'minigpt2' / 'hub' / 'config.json'} and check "
                            f"`sha256sum` prints {sha}.")
    # a commit hash given is asked for as it is; a branch name is replaced by the locked commit
    hub.requests.clear()
    other = "f" * 40
    hub.commits["org/m"] = other
    fetch_hub_file(HubFile("org/m", "config.json", revision=other), cache=tmp_path / "c2")
    assert {p for _, p, _ in hub.requests if "/resolve/" in p} == {f"/org/m/resolve/{other}/config.json"}


def test_hub_file_into_a_local_dir_and_its_404_line(hub, tmp_path):
    hub.add_repo_file("org/m", "config.json", CONFIG)
    got = fetch_hub_file(HubFile("org/m", "config.json", revision=FAKE_COMMIT), local_dir=tmp_path / "dest")
    assert got == tmp_path / "dest" / "config.json" and got.read_bytes() == CONFIG
    with pytest.raises(DownloadError) as e:
        fetch_hub_file(HubFile("org/m", "none.json", revision=FAKE_COMMIT, sha256="cd" * 32), local_dir=tmp_path / "d")
    msg = str(e.value)  # the client's class name (EntryNotFoundError, RemoteEntryNotFoundError) varies by version
    assert msg.startswith(f"org/m/none.json at revision {FAKE_COMMIT} was not found on {hub.url} (404: ")
    assert msg.split(" (404: ")[1].split(")")[0].endswith("EntryNotFoundError")
    assert msg.endswith(f"EntryNotFoundError). To place it by hand: download https://huggingface.co/org/m/resolve/"
                            f"{FAKE_COMMIT}/none.json on a machine with internet, copy it to "
                            f"{tmp_path / 'd' / 'none.json'} and check `sha256sum` prints {'cd' * 32}.")


def test_hub_answering_an_http_error_is_one_line(hub, tmp_path, monkeypatch):
    hub.add_repo_file("org/m", "config.json", CONFIG)
    answer = FakeHub._answer

    def teapot(self, h, body):
        if "/resolve/" in h.path:
            self.requests.append((h.command, h.path, None))
            h.send_response(418)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        answer(self, h, body)

    monkeypatch.setattr(FakeHub, "_answer", teapot)
    with pytest.raises(DownloadError) as e:
        fetch_hub_file(HubFile("org/m", "config.json", sha256="ab" * 32))
    assert str(e.value) == (f"org/m/config.json: the hub at {hub.url} answered HTTP 418. To place it by hand: download "
                            "https://huggingface.co/org/m/resolve/main/config.json on a machine with internet, copy it "
                            f"to {tmp_path / 'cache' / 'minigpt2' / 'hub' / 'config.json'} and check `sha256sum` prints "
                            f"{'ab' * 32}.")


def test_hub_down_is_one_line_naming_the_endpoint(hub, tmp_path):
    url = hub.url
    hub.stop()
    with pytest.raises(DownloadError) as e:
        fetch_hub_file(HubFile("org/m", "config.json", sha256="ab" * 32), cache=tmp_path / "c")
    msg = str(e.value)
    assert msg.startswith(f"org/m/config.json: cannot reach {url} (")
    kind = msg.split(" (", 1)[1].split(": ", 1)[0]  # the client's error class, e.g. ConnectError
    assert kind.endswith("Error") and kind != "NoneType"
    assert msg.endswith("). To place it by hand: download https://huggingface.co/org/m/resolve/main/config.json on a "
                        f"machine with internet, copy it to {tmp_path / 'c' / 'hub' / 'config.json'} and check "
                        f"`sha256sum` prints {'ab' * 32}.")


# ---- GPT-2 weights ----------------------------------------------------------------------------------------------------
def test_download_weights_offline_lines(hub, tmp_path, monkeypatch):
    dest = tmp_path / "gpt2"
    u = f"https://huggingface.co/openai-community/gpt2/resolve/{REV}"
    with pytest.raises(DownloadError) as e:
        download.download_weights("gpt2", dest, offline=True)
    assert str(e.value) == (f"GPT-2 weights 'gpt2' are not in {dest} and downloads are off (offline mode). To place "
                            f"them by hand: download {u}/config.json to {dest / 'config.json'}; download "
                            f"{u}/model.safetensors to {dest / 'model.safetensors'}; then check that `sha256sum "
                            f"model.safetensors` prints {SHA}.")
    assert not dest.exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "config.json").write_bytes(CONFIG)  # only the missing file is listed
    with pytest.raises(DownloadError) as e:
        download.download_weights("gpt2-medium", dest)
    assert str(e.value) == (f"GPT-2 weights 'gpt2-medium' are not in {dest} and downloads are off (offline mode, "
                            "HF_HUB_OFFLINE=1). To place them by hand: download https://huggingface.co/"
                            f"openai-community/gpt2-medium/resolve/main/model.safetensors to "
                            f"{dest / 'model.safetensors'}; then compare `sha256sum model.safetensors` with the "
                            "SHA256 on the file's page on the hub.")
    assert hub.requests == []


def test_download_weights_says_where_from_and_places_both_files(hub, tmp_path, capsys):
    weights = b"\x08" + b"\0" * 7 + b"{}      "  # bytes only; nothing here parses them
    hub.commits["openai-community/gpt2-xl"] = FAKE_COMMIT
    hub.add_repo_file("openai-community/gpt2-xl", "config.json", CONFIG)
    hub.add_repo_file("openai-community/gpt2-xl", "model.safetensors", weights, lfs=True)
    dest = tmp_path / "a" / "gpt2-xl"
    assert download.download_weights("gpt2-xl", dest) == dest
    capsys.readouterr()
    assert download.download_weights("gpt2-xl", dest) == dest  # an existing folder is fine
    assert capsys.readouterr().out.splitlines()[0] == (
        f"downloading gpt2-xl weights from {hub.url}/openai-community/gpt2-xl into {dest}")
    assert (dest / "config.json").read_bytes() == CONFIG and (dest / "model.safetensors").read_bytes() == weights
    gets = [p for m, p, _ in hub.requests if m == "GET"]
    assert gets.index(next(p for p in gets if p.endswith("config.json"))) < gets.index(
        next(p for p in gets if p.endswith("model.safetensors")))  # the weights land last


# ---- plain URLs ---------------------------------------------------------------------------------------------------
class Scripted:
    """A plain HTTP server whose answers a test lists: ("full", data), ("cut", data) (half the body, then the
    connection is dropped), ("ignore-range", data) (200 and the whole body whatever the Range), ("no-length", data)."""

    def __init__(self) -> None:
        self.script: list[tuple[str, bytes]] = []
        self.requests: list[tuple[str | None, str | None]] = []  # (Range, User-Agent)
        s = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a) -> None:
                pass

            def do_GET(self) -> None:
                s.requests.append((self.headers.get("Range"), self.headers.get("User-Agent")))
                how, data = s.script.pop(0) if len(s.script) > 1 else s.script[0]
                rng = self.headers.get("Range")
                start = int(rng[6:-1]) if rng and how not in ("ignore-range",) else 0
                part = data[start:]
                self.send_response(206 if start else 200)
                if how != "no-length":
                    self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if how == "cut":
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(part)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def web(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGPT2_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    s = Scripted()
    s.sleeps = []
    monkeypatch.setattr(download.time, "sleep", s.sleeps.append)
    yield s
    s.stop()


DATA = bytes(range(200)) * 5  # 1,000 bytes


def test_url_is_fetched_locked_and_then_served_from_the_cache(web, tmp_path):
    web.script = [("full", DATA)]
    got = fetch_url(web.url + "/a.txt", "a.txt")
    assert got == tmp_path / "cache" / "url" / "a.txt" and got.read_bytes() == DATA
    assert web.requests == [(None, "minigpt2")]
    lock = json.loads((tmp_path / "cache" / "lock.json").read_text())
    assert lock == {f"url:{web.url}/a.txt": {"sha256": hashlib.sha256(DATA).hexdigest()}}
    assert fetch_url(web.url + "/a.txt", "a.txt", offline=True) == got and len(web.requests) == 1
    got.write_bytes(b"tampered")
    with pytest.raises(ChecksumError) as e:
        fetch_url(web.url + "/a.txt", "a.txt")
    sha = hashlib.sha256(DATA).hexdigest()
    assert str(e.value) == (f"{web.url}/a.txt: checksum mismatch, expected sha256 {sha} but got "
                            f"{hashlib.sha256(b'tampered').hexdigest()}; the file was deleted. Run the command again "
                            f"to re-download. If it keeps failing: To place it by hand: download {web.url}/a.txt on a "
                            f"machine with internet, copy it to {got} and check `sha256sum` prints {sha}.")
    assert not got.exists()


def test_url_resumed_with_range_and_a_server_that_ignores_it(web, tmp_path):
    web.script = [("cut", DATA), ("full", DATA)]
    got = fetch_url(web.url + "/r.txt", "r.txt", cache=tmp_path / "c")
    assert got == tmp_path / "c" / "url" / "r.txt" and got.read_bytes() == DATA and not (tmp_path / "c" / "url" / "r.txt.part").exists()
    assert [r for r, _ in web.requests] == [None, "bytes=500-"]
    web.requests.clear()
    web.script = [("cut", DATA), ("ignore-range", DATA)]  # 200 to a Range request: the file starts over
    got = fetch_url(web.url + "/i.txt", "i.txt", cache=tmp_path / "c")
    assert got.read_bytes() == DATA
    assert [r for r, _ in web.requests] == [None, "bytes=500-"]


def test_url_without_content_length_and_with_a_pin(web, tmp_path):
    web.script = [("no-length", DATA)]
    sha = hashlib.sha256(DATA).hexdigest()
    assert fetch_url(web.url + "/n.txt", "n.txt", sha256=sha).read_bytes() == DATA
    assert json.loads((tmp_path / "cache" / "lock.json").read_text()) == {f"url:{web.url}/n.txt": {"sha256": sha}}


@pytest.mark.parametrize("retries", [0, 2])
def test_url_that_keeps_breaking_off_keeps_the_part_file(web, tmp_path, retries):
    web.script = [("cut", DATA)]
    with pytest.raises(DownloadError) as e:
        fetch_url(web.url + "/c.txt", "c.txt", retries=retries)
    part = tmp_path / "cache" / "url" / "c.txt.part"
    assert len(web.requests) == retries + 1
    msg = str(e.value)
    assert msg.startswith(f"{web.url}/c.txt: the transfer kept breaking off (IncompleteRead(0 bytes read, ")
    assert msg.endswith(f"); the partial file {part} is kept and the next run resumes it. To place it by hand: "
                        f"download {web.url}/c.txt on a machine with internet, copy it to "
                        f"{tmp_path / 'cache' / 'url' / 'c.txt'}.")
    assert part.is_file() and not (tmp_path / "cache" / "url" / "c.txt").exists()
    # each retry resumed where the last stopped: 500, then half of the remaining 500 each time
    assert part.stat().st_size == 1000 - 500 // (2 ** retries)
    assert web.sleeps == [0.2, 0.4][:retries]  # a pause, longer each time, between tries; none after the last


def test_url_error_lines(hub, tmp_path):
    path = hub.add_url("/f.txt", b"hello")
    hub.missing(path)
    final = tmp_path / "cache" / "minigpt2" / "url" / "f.txt"
    final.parent.mkdir(parents=True)
    final.with_name("f.txt.part").write_bytes(b"he")  # an earlier cut transfer: the 404 removes it
    with pytest.raises(DownloadError) as e:
        fetch_url(hub.url + path, "f.txt", sha256="ef" * 32)
    assert str(e.value) == (f"{hub.url}/f.txt: HTTP 404 Not Found. To place it by hand: download {hub.url}/f.txt on a "
                            f"machine with internet, copy it to {final} and check `sha256sum` prints {'ef' * 32}.")
    assert not final.with_name("f.txt.part").exists()
    with pytest.raises(DownloadError) as e:
        fetch_url(hub.url + "/g.txt", "g.txt", offline=True)
    assert str(e.value) == (f"g.txt is not here and downloads are off (offline mode). To place it by hand: download "
                            f"{hub.url}/g.txt on a machine with internet, copy it to {final.with_name('g.txt')}.")
    url = hub.url + "/down.txt"
    hub.stop()
    with pytest.raises(DownloadError) as e:
        fetch_url(url, "down.txt")
    assert str(e.value).startswith(f"cannot reach {url} (")
    assert str(e.value).endswith(f"). To place it by hand: download {url} on a machine with internet, copy it to "
                                 f"{final.with_name('down.txt')}.")
    assert "Connection refused" in str(e.value)


def test_http_get_raises_incomplete_read_with_the_missing_count(web, tmp_path):
    web.script = [("cut", DATA)]
    part = tmp_path / "x.part"
    with pytest.raises(http.client.IncompleteRead) as e:
        download._http_get(web.url + "/x", part)
    assert part.read_bytes() == DATA[:500]
    assert e.value.expected == 500
    os.remove(part)


def test_progress_bar_names_the_file_in_scaled_bytes_from_where_it_resumes_and_goes_away(web, tmp_path, capsys):
    web.script = [("cut", DATA), ("full", DATA)]
    fetch_url(web.url + "/t.txt", "t.txt")
    frames = capsys.readouterr().err.split("\r")
    shown = [f for f in frames if f.strip()]
    assert shown[0].startswith("t.txt:   0%|") and "| 0.00/1.00k [" in shown[0]  # 1,000 bytes as 1.00k
    resumed = [f for f in shown if f.startswith("t.txt:  50%|")]
    assert resumed and "| 500/1.00k [" in resumed[0]  # the second try starts at the 500 bytes it has
    assert all("B/s]" in f for f in shown)
    assert frames[-1].strip() == ""  # leave=False: the finished bar is cleared


def test_url_default_retries_pin_and_lines_with_the_pin(web, tmp_path):
    web.script = [("cut", DATA)]
    sha = hashlib.sha256(DATA).hexdigest()
    with pytest.raises(DownloadError) as e:
        fetch_url(web.url + "/c.txt", "c.txt", sha256=sha)
    assert len(web.requests) == 4  # three retries by default
    assert str(e.value).endswith(f" and check `sha256sum` prints {sha}.")
    with pytest.raises(DownloadError) as e:
        fetch_url(web.url + "/o.txt", "o.txt", sha256=sha, offline=True)
    assert str(e.value).endswith(f" and check `sha256sum` prints {sha}.")
    web.script = [("full", DATA)]
    with pytest.raises(ChecksumError) as e:  # a fresh download that is not the pinned bytes
        fetch_url(web.url + "/w.txt", "w.txt", sha256="9" * 64)
    final = tmp_path / "cache" / "url" / "w.txt"
    assert str(e.value) == (f"{web.url}/w.txt: checksum mismatch, expected sha256 {'9' * 64} but got {sha}; the file "
                            f"was deleted. Run the command again to re-download. If it keeps failing: To place it by "
                            f"hand: download {web.url}/w.txt on a machine with internet, copy it to {final} and check "
                            f"`sha256sum` prints {'9' * 64}.")
    assert not final.exists() and not final.with_name("w.txt.part").exists()


def test_a_body_of_many_blocks_is_whole(web, tmp_path):
    big = bytes(range(256)) * 800  # 204,800 bytes: four reads of 64 KiB
    web.script = [("full", big)]
    assert fetch_url(web.url + "/big", "big").read_bytes() == big
    assert len(web.requests) == 1


def test_url_unreachable_line_gives_the_reason_and_a_local_error_its_own(web, tmp_path):
    url = web.url + "/gone.txt"
    web.stop()
    sha = "ab" * 32
    with pytest.raises(DownloadError) as e:
        fetch_url(url, "gone.txt", sha256=sha)
    final = tmp_path / "cache" / "url" / "gone.txt"
    assert str(e.value) == (f"cannot reach {url} ({ConnectionRefusedError(111, 'Connection refused')}). To place it "
                            f"by hand: download {url} on a machine with internet, copy it to {final} and check "
                            f"`sha256sum` prints {sha}.")


def test_hub_revision_a_commit_wins_over_the_lock_and_a_branch_is_named(hub, tmp_path):
    hub.add_repo_file("org/m", "config.json", CONFIG)
    cache = tmp_path / "c"
    cache.mkdir()
    other = "e" * 40
    (cache / "lock.json").write_text(json.dumps({"model:org/m/config.json": {"revision": other, "sha256": "x"}}))
    hub.requests.clear()
    fetch_hub_file(HubFile("org/m", "config.json", revision=FAKE_COMMIT, sha256=hashlib.sha256(CONFIG).hexdigest()),
                   cache=cache)
    assert {p for _, p, _ in hub.requests if "/resolve/" in p} == {f"/org/m/resolve/{FAKE_COMMIT}/config.json"}
    with pytest.raises(DownloadError) as e:  # a branch and no lock entry: the branch is the revision named
        fetch_hub_file(HubFile("org/m", "none.json"), cache=cache)
    assert str(e.value).startswith(f"org/m/none.json at revision main was not found on {hub.url} (404: ")


def test_offline_never_asks_even_a_reachable_hub_and_names_the_locked_commit(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # the client's own default endpoint is the fake hub too
    hub.add_repo_file("org/m", "config.json", CONFIG)
    cache = tmp_path / "c"
    cache.mkdir()
    locked = "d" * 40
    (cache / "lock.json").write_text(json.dumps({"model:org/m/config.json": {"revision": locked, "sha256": "x"}}))
    with pytest.raises(DownloadError) as e:
        fetch_hub_file(HubFile("org/m", "config.json"), cache=cache, offline=True)
    assert f"download https://huggingface.co/org/m/resolve/{locked}/config.json on a machine" in str(e.value)
    assert hub.requests == []


def test_online_pin_mismatch_line_names_where_the_file_goes(hub, tmp_path):
    hub.add_repo_file("org/m", "config.json", CONFIG)
    with pytest.raises(ChecksumError) as e:
        fetch_hub_file(HubFile("org/m", "config.json", revision=FAKE_COMMIT, sha256="7" * 64), local_dir=tmp_path / "d")
    assert str(e.value) == (f"org/m/config.json: checksum mismatch, expected sha256 {'7' * 64} but got "
                            f"{hashlib.sha256(CONFIG).hexdigest()}; the file was deleted. Run the command again to "
                            f"re-download. If it keeps failing: To place it by hand: download https://huggingface.co/"
                            f"org/m/resolve/{FAKE_COMMIT}/config.json on a machine with internet, copy it to "
                            f"{tmp_path / 'd' / 'config.json'} and check `sha256sum` prints {'7' * 64}.")
