"""minigpt2.download against a local fake hub: GPT-2 weights and plain URLs, verified, resumed, refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from minigpt2 import download
from minigpt2.checkpoint import load_model, resolve_model
from minigpt2.download import ChecksumError, DownloadError, fetch_url
from tests.fakehub import FAKE_COMMIT, FakeHub

GPT2_REVISION, GPT2_SHA256 = download._GPT2_PINNED["gpt2"]


@pytest.fixture()
def tiny_hf_model(tiny_hf_dir) -> dict[str, bytes]:
    """config.json + model.safetensors of the tiny random GPT-2 that conftest saves with transformers."""
    return {name: (tiny_hf_dir / name).read_bytes() for name in ("config.json", "model.safetensors")}


def serve_gpt2(hub: FakeHub, files: dict[str, bytes], name: str = "gpt2", commit: str = GPT2_REVISION) -> str:
    repo = f"openai-community/{name}"
    hub.commits[repo] = commit
    hub.add_repo_file(repo, "config.json", files["config.json"])
    return hub.add_repo_file(repo, "model.safetensors", files["model.safetensors"], lfs=True)


def test_resolve_model_downloads_pinned_gpt2_verifies_and_loads(hub, tiny_hf_model, tmp_path, monkeypatch):
    weights = tiny_hf_model["model.safetensors"]
    # The real pin is the 548 MB file; pin the tiny one instead, at the real revision.
    monkeypatch.setitem(download._GPT2_PINNED, "gpt2", (GPT2_REVISION, hashlib.sha256(weights).hexdigest()))
    serve_gpt2(hub, tiny_hf_model)

    folder = resolve_model("gpt2", cache_dir=tmp_path / "checkpoints")

    assert folder == tmp_path / "checkpoints" / "gpt2"
    assert (folder / "model.safetensors").read_bytes() == weights
    model = load_model(folder)
    assert model.config.n_embd == 32 and model.config.n_layer == 2
    assert torch.isfinite(model.logits(torch.tensor([[1, 2, 3]]))).all()
    # Only the pinned revision was asked for, never a branch.
    asked = {p for _, p, _ in hub.requests if "/resolve/" in p}
    assert asked and all(f"/resolve/{GPT2_REVISION}/" in p for p in asked)
    lock = json.loads((tmp_path / "cache" / "minigpt2" / "lock.json").read_text())
    assert lock["model:openai-community/gpt2/model.safetensors"]["revision"] == GPT2_REVISION
    # A second call finds the folder and does not touch the network.
    n = len(hub.requests)
    assert resolve_model("gpt2", cache_dir=tmp_path / "checkpoints") == folder and len(hub.requests) == n


def test_weights_not_matching_the_pinned_sha256_are_refused_and_deleted(hub, tiny_hf_model, tmp_path):
    serve_gpt2(hub, tiny_hf_model)  # tiny bytes, but the real pin for gpt2 124M

    with pytest.raises(ChecksumError) as err:
        resolve_model("gpt2", cache_dir=tmp_path / "checkpoints")

    msg = str(err.value)
    assert "checksum mismatch" in msg and GPT2_SHA256 in msg and hashlib.sha256(
        tiny_hf_model["model.safetensors"]).hexdigest() in msg
    assert f"To place it by hand: download https://huggingface.co/openai-community/gpt2/resolve/{GPT2_REVISION}/" \
           "model.safetensors" in msg
    dest = tmp_path / "checkpoints" / "gpt2"
    assert not (dest / "model.safetensors").exists()
    assert not any(p.stat().st_size == len(tiny_hf_model["model.safetensors"]) for p in dest.rglob("*") if p.is_file())


def test_corrupted_transfer_is_refused_against_the_hub_etag(hub, tiny_hf_model, tmp_path):
    key = serve_gpt2(hub, tiny_hf_model, name="gpt2-medium", commit=FAKE_COMMIT)  # no pinned sha: the ETag decides
    hub.corrupt(key)

    with pytest.raises(ChecksumError, match="checksum mismatch.*deleted"):
        download.download_weights("gpt2-medium", tmp_path / "gpt2-medium")
    assert not (tmp_path / "gpt2-medium" / "model.safetensors").exists()


def test_download_cut_off_midway_is_retried_to_a_correct_file(hub, tiny_hf_model, tmp_path):
    key = serve_gpt2(hub, tiny_hf_model, name="gpt2-large", commit=FAKE_COMMIT)
    hub.cut_once(key)

    folder = download.download_weights("gpt2-large", tmp_path / "gpt2-large")

    assert (folder / "model.safetensors").read_bytes() == tiny_hf_model["model.safetensors"]
    gets = [r for r in hub.requests if r[0] == "GET" and r[1].endswith("model.safetensors")]
    assert len(gets) == 2  # the cut transfer and the retry
    load_model(folder)


def test_server_down_says_how_to_place_the_files_by_hand(hub, tmp_path):
    hub.stop()
    with pytest.raises(DownloadError) as err:
        resolve_model("gpt2", cache_dir=tmp_path / "checkpoints")
    msg = str(err.value)
    assert "cannot reach" in msg and hub.url in msg
    assert f"https://huggingface.co/openai-community/gpt2/resolve/{GPT2_REVISION}/config.json" in msg
    assert str(tmp_path / "checkpoints" / "gpt2") in msg


def test_missing_file_is_a_404_with_instructions(hub, tiny_hf_model, tmp_path):
    key = serve_gpt2(hub, tiny_hf_model)
    hub.missing(key)
    with pytest.raises(DownloadError, match=r"model.safetensors at revision .* not found .*404.*To place it by hand"):
        resolve_model("gpt2", cache_dir=tmp_path / "checkpoints")
    assert not (tmp_path / "checkpoints" / "gpt2" / "model.safetensors").exists()


@pytest.mark.parametrize("how", ["argument", "HF_HUB_OFFLINE"])
def test_offline_never_contacts_the_hub(hub, tmp_path, monkeypatch, how):
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = r"offline.*To place them by hand.*config.json.*model.safetensors.*sha256sum.*" + GPT2_SHA256
    with pytest.raises(DownloadError, match=expected):
        resolve_model("gpt2", cache_dir=tmp_path / "checkpoints", offline=how == "argument")
    assert hub.requests == []


def test_first_download_is_locked_and_later_downloads_must_match(hub, tmp_path):
    repo, name = "SetFit/sst5", "dev.jsonl"
    hub.add_repo_file(repo, name, b'{"text": "a", "label": 1}\n', repo_type="dataset")
    f = download.HubFile(repo, name, repo_type="dataset")
    first = download.fetch_hub_file(f)
    lock = json.loads((tmp_path / "cache" / "minigpt2" / "lock.json").read_text())[f.key]
    assert lock == {"revision": FAKE_COMMIT, "sha256": hashlib.sha256(first.read_bytes()).hexdigest()}

    # Upstream changes the file (a consistent new ETag) and our copy is gone: the lock refuses the new bytes.
    download._remove(first)
    hub.add_repo_file(repo, name, b'{"text": "b", "label": 2}\n', repo_type="dataset")
    hub.requests.clear()
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        download.fetch_hub_file(f)
    assert all(f"/resolve/{FAKE_COMMIT}/" in p for _, p, _ in hub.requests if "/resolve/" in p)


# ---- plain URLs -----------------------------------------------------------------------------------------------
def test_url_cut_off_midway_is_resumed_with_range(hub, tmp_path):
    data = bytes(range(256)) * 2000
    path = hub.add_url("/cache/epub/1041/pg1041.txt", data)
    hub.cut_once(path)

    got = fetch_url(hub.url + path, "pg1041.txt")

    assert got.read_bytes() == data and not got.with_name("pg1041.txt.part").exists()
    ranges = [r for m, p, r in hub.requests if p == path]
    assert ranges[0] is None and ranges[1] == f"bytes={len(data) // 2}-"


def test_url_errors_are_clear(hub, tmp_path):
    path = hub.add_url("/file.txt", b"hello")
    hub.missing(path)
    with pytest.raises(DownloadError, match=r"HTTP 404.*To place it by hand.*file.txt"):
        fetch_url(hub.url + path, "file.txt")
    with pytest.raises(DownloadError, match="offline"):
        fetch_url(hub.url + "/other.txt", "other.txt", offline=True)
    url = hub.url + "/down.txt"
    hub.stop()
    with pytest.raises(DownloadError, match="cannot reach"):
        fetch_url(url, "down.txt")


def test_url_with_wrong_pinned_sha256_leaves_no_file(hub, tmp_path):
    path = hub.add_url("/file.txt", b"hello")
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        fetch_url(hub.url + path, "file.txt", sha256="0" * 64)
    assert not list((tmp_path / "cache" / "minigpt2" / "url").glob("file.txt*"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) for a disk that is full")
def test_a_download_that_cannot_be_written_says_so_and_not_that_the_server_is_down(hub, tiny_hf_model, tmp_path):
    """A full disk, or a cache or model folder that runs through a file, is one `cannot write` line naming the path
    and the reason, for a plain URL, a hub file and the GPT-2 weights; the partial file is kept for the next run."""
    data = b"x" * 200_000
    path = hub.add_url("/cache/epub/1041/pg1041.txt", data)
    full = tmp_path / "full"
    (full / "url").mkdir(parents=True)
    (full / "url" / "pg1041.txt.part").symlink_to("/dev/full")  # every write to it fails with ENOSPC
    with pytest.raises(DownloadError) as err:
        fetch_url(hub.url + path, "pg1041.txt", cache=full)
    assert str(err.value).startswith(f"cannot write {full / 'url' / 'pg1041.txt.part'} (No space left on device)")
    assert (full / "url" / "pg1041.txt.part").is_symlink() and not (full / "url" / "pg1041.txt").exists()

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(DownloadError, match=rf"^cannot write {blocked / 'url'} \(Not a directory\)"):
        fetch_url(hub.url + path, "pg1041.txt", cache=blocked)
    serve_gpt2(hub, tiny_hf_model)
    with pytest.raises(DownloadError, match=rf"^cannot write {blocked}/\S* \(Not a directory\)"):
        download.fetch_hub_file(download.gpt2_files("gpt2")[0], cache=blocked)
    with pytest.raises(DownloadError, match=rf"^cannot write {blocked / 'gpt2'} \(Not a directory\)"):
        resolve_model("gpt2", cache_dir=blocked)
    hub.stop()  # and a server that is down is still that, not a write error
    with pytest.raises(DownloadError, match="^cannot reach"):
        fetch_url(hub.url + "/down.txt", "down.txt", cache=tmp_path / "fine")
