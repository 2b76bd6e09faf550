"""Everything minigpt2 fetches from the network goes through this module.

Two ways in:
- `fetch_hub_file(HubFile(...))`: a file of a Hugging Face hub repo, through the maintained client
  (`huggingface_hub.hf_hub_download`, which honours `HF_ENDPOINT`, writes atomically and resumes a cut-off
  transfer), at a pinned revision.
- `fetch_url(url, name)`: a plain HTTP file (the Gutenberg sonnets), with urllib: `.part` file, resume by `Range`,
  `os.replace` once complete.

Every file is checked before it is handed out: against a pinned sha256 where one is known (GPT-2 124M, SST-5), else
against what the hub itself publishes (the ETag: sha256 for LFS files, git blob sha1 for small ones), and on later
runs against the lock file written on first use (`<cache>/lock.json`: revision + sha256, "trust on first use"). A file
that fails is deleted and refused with a message saying what to do. Offline (`offline=True` or `HF_HUB_OFFLINE=1`)
nothing is contacted and the error says where to place the file by hand.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .atomic import atomic_write
from .errors import UserError

HUB = "https://huggingface.co"
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class DownloadError(UserError, RuntimeError):
    """A file could not be fetched: offline, not found, server down, or it could not be written here. The message
    says how to place it by hand, or what the local folder lacks."""


class ChecksumError(DownloadError):
    """A fetched file's bytes are not the ones published; the file has been deleted."""


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repo. `revision` is a commit hash where we could verify one, else a branch resolved (and
    locked) on first download; `sha256` is pinned where the published value could be verified."""

    repo_id: str
    filename: str
    repo_type: str = "model"
    revision: str = "main"
    sha256: str | None = None

    @property
    def key(self) -> str:
        return f"{self.repo_type}:{self.repo_id}/{self.filename}"

    def url(self, revision: str | None = None, endpoint: str | None = None) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"{endpoint or hub_endpoint()}/{kind}{self.repo_id}/resolve/{revision or self.revision}/{self.filename}"


# GPT-2 weights. The 124M revision and sha256 are the values published for openai-community/gpt2 (the hub's
# X-Repo-Commit / X-Linked-Etag, 548,105,171 bytes), cross-checked in several public projects. For the larger
# presets we found no value we could verify, so they follow `main`, locked on first download (see module docstring).
_GPT2_PINNED = {
    "gpt2": ("607a30d783dfa663caf39e06633721c8d4cfcd7e",
             "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"),
}


def gpt2_files(name: str) -> tuple[HubFile, HubFile]:
    """(config.json, model.safetensors) of a GPT-2 preset on the hub."""
    if name not in {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}:
        raise ValueError(f"no GPT-2 weights named {name!r} (gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
    revision, sha = _GPT2_PINNED.get(name, ("main", None))
    repo = f"openai-community/{name}"
    return HubFile(repo, "config.json", revision=revision), HubFile(repo, "model.safetensors", revision=revision,
                                                                    sha256=sha)


# ---- settings read at call time (tests and users change them after import) ------------------------------------
def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", HUB).rstrip("/")


def env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """Where downloads are kept: `$MINIGPT2_CACHE`, else `~/.cache/minigpt2`."""
    return Path(os.environ.get("MINIGPT2_CACHE") or Path.home() / ".cache" / "minigpt2")


# ---- checksums and the lock file --------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The hub's ETag of a small (non-LFS) file is its git blob id."""
    h = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Lock:
    """`lock.json`: the revision and sha256 each source had when first fetched, so later fetches get the same bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str) -> dict[str, str]:
        return self.entries.get(key, {})

    def record(self, key: str, **fields: str) -> None:
        if self.entries.get(key) == fields:
            return
        self.entries[key] = fields
        atomic_write(self.path, json.dumps(self.entries, indent=2, sort_keys=True) + "\n")


def _by_hand(url: str, where: Path, sha256: str | None) -> str:
    check = f" and check `sha256sum` prints {sha256}" if sha256 else ""
    return f"To place it by hand: download {url} on a machine with internet, copy it to {where}{check}."


# What a failed write of the local copy raises (a full disk or quota, a read-only or unwritable folder, a path that
# runs through a file): the server is not to blame, and "cannot reach" would send the user after the network.
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                           errno.EISDIR})


def _local_failure(e: BaseException) -> bool:
    """True when `e` is a failure to write a local file, not to reach a server."""
    network = (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror)
    return isinstance(e, OSError) and not isinstance(e, network) and e.errno in _LOCAL_ERRNOS


def _cannot_write(where: Path, e: OSError) -> DownloadError:
    """The one-line error for a download that could not be written (`e`, a `_local_failure`) at `where`."""
    return DownloadError(f"cannot write {e.filename or where} ({e.strerror or e}): a download needs free space and "
                         f"write access there (the download cache is $MINIGPT2_CACHE, else ~/.cache/minigpt2)")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of whichever HTTP library the installed hub client uses (httpx2 in 2.x, httpx in
    1.x, requests before), plus the OSErrors of the standard library."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _remove(path: Path) -> None:
    """Delete a cached file; for the hub cache also the blob a snapshot link points to."""
    if path.is_symlink():
        target = path.resolve()
        path.unlink()
        target.unlink(missing_ok=True)
    else:
        path.unlink(missing_ok=True)


def _verify(path: Path, expected_sha256: str | None, etag: str | None, source: str, url: str, where: Path) -> str:
    """sha256 of `path` after checking it against the pinned/locked value or the published ETag; deletes on failure."""
    actual = sha256_file(path)
    if expected_sha256 is None and etag and _HEX64.fullmatch(etag):
        expected_sha256 = etag  # an LFS file: the hub's ETag is its sha256
    if expected_sha256 is not None and actual != expected_sha256:
        _remove(path)
        raise ChecksumError(f"{source}: checksum mismatch, expected sha256 {expected_sha256} but got {actual}; "
                            f"the file was deleted. Run the command again to re-download. If it keeps failing: "
                            + _by_hand(url, where, expected_sha256))
    if expected_sha256 is None and etag and _HEX40.fullmatch(etag):
        got = git_blob_sha1(path)
        if got != etag:
            _remove(path)
            raise ChecksumError(f"{source}: checksum mismatch, the hub publishes git blob id {etag} but the "
                                f"downloaded file has {got}; the file was deleted. Run the command again.")
    return actual


# ---- hub files ----------------------------------------------------------------------------------------------------
def fetch_hub_file(f: HubFile, cache: Path | None = None, offline: bool = False,
                   local_dir: Path | None = None) -> Path:
    """Local path of a verified copy of a hub file, downloading it when needed.

    Files go to the hub client's cache under `cache/hub` (default `cache_dir()`), or into `local_dir` when given
    (the model folder for weights).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    cache = Path(cache) if cache is not None else cache_dir()
    lock = Lock(cache / "lock.json")
    locked = lock.get(f.key)
    revision = f.revision if _HEX40.fullmatch(f.revision) else locked.get("revision", f.revision)
    expected = f.sha256 or locked.get("sha256")
    where = (local_dir or cache / "hub") / f.filename
    url = f.url(revision, HUB)
    kwargs = dict(repo_id=f.repo_id, filename=f.filename, repo_type=f.repo_type, revision=revision,
                  cache_dir=cache / "hub", local_dir=local_dir)

    if offline or env_offline():
        try:
            path = Path(hf_hub_download(**kwargs, local_files_only=True))
        except (LocalEntryNotFoundError, EntryNotFoundError, FileNotFoundError):
            raise DownloadError(f"{f.repo_id}/{f.filename} is not here and downloads are off (offline mode"
                                f"{', HF_HUB_OFFLINE=1' if env_offline() else ''}). "
                                + _by_hand(url, where, expected)) from None
        _verify(path, expected, None, f"{f.repo_id}/{f.filename}", url, where)
        return path

    endpoint = hub_endpoint()
    try:
        meta = get_hf_file_metadata(f.url(revision, endpoint), endpoint=endpoint)
        commit = meta.commit_hash or revision
        path = Path(hf_hub_download(**{**kwargs, "revision": commit}, endpoint=endpoint))
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise DownloadError(f"{f.repo_id}/{f.filename} at revision {revision} was not found on {endpoint} (404: "
                            f"{type(e).__name__}). " + _by_hand(url, where, expected)) from None
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", "?")
        raise DownloadError(f"{f.repo_id}/{f.filename}: the hub at {endpoint} answered HTTP {status}. "
                            + _by_hand(url, where, expected)) from None
    except (LocalEntryNotFoundError, *_network_errors()) as e:  # refused, DNS failure, timeout
        if _local_failure(e):
            raise _cannot_write(where, e) from None
        raise DownloadError(f"{f.repo_id}/{f.filename}: cannot reach {endpoint} ({type(e).__name__}: {e}). "
                            + _by_hand(url, where, expected)) from None
    sha = _verify(path, expected, (meta.etag or "").strip('"'), f"{f.repo_id}/{f.filename}", url, where)
    lock.record(f.key, revision=commit, sha256=sha)
    return path


def download_weights(name: str, dest: Path, offline: bool = False) -> Path:
    """Download, verify and place `config.json` + `model.safetensors` of a GPT-2 preset in `dest`; returns `dest`.

    Called by `checkpoint.resolve_model` when `checkpoints/<name>/` has no weights. The weights land last, so a
    folder holding `model.safetensors` is always complete.
    """
    dest = Path(dest)
    config, weights = gpt2_files(name)
    if offline or env_offline():
        steps = " ".join(f"download {f.url(endpoint=HUB)} to {dest / f.filename};"
                         for f in (config, weights) if not (dest / f.filename).is_file())
        check = (f" then check that `sha256sum model.safetensors` prints {weights.sha256}." if weights.sha256 else
                 " then compare `sha256sum model.safetensors` with the SHA256 on the file's page on the hub.")
        raise DownloadError(f"GPT-2 weights {name!r} are not in {dest} and downloads are off (offline mode"
                            f"{', HF_HUB_OFFLINE=1' if env_offline() else ''}). To place them by hand: {steps}{check}")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_write(dest, e) from None
    print(f"downloading {name} weights from {hub_endpoint()}/{weights.repo_id} into {dest}", flush=True)
    for f in (config, weights):
        fetch_hub_file(f, local_dir=dest, offline=offline)
    return dest


# ---- plain HTTP (the Gutenberg sonnets) -------------------------------------------------------------------------
def fetch_url(url: str, name: str, sha256: str | None = None, cache: Path | None = None,
              offline: bool = False, retries: int = 3) -> Path:
    """Local path of a verified copy of `url`, kept as `cache/url/<name>`.

    A transfer that breaks off is resumed from where it stopped (HTTP `Range`), up to `retries` times. The file
    appears under its final name only once complete and checked. Without a pinned `sha256`, the sha256 of the first
    download is locked, and later downloads must match it.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    final = cache / "url" / name
    lock = Lock(cache / "lock.json")
    expected = sha256 or lock.get(f"url:{url}").get("sha256")
    if final.is_file():
        _verify(final, expected, None, url, url, final)
        return final
    if offline or env_offline():
        raise DownloadError(f"{name} is not here and downloads are off (offline mode). "
                            + _by_hand(url, final, expected))
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_write(final.parent, e) from None
    part = final.with_name(final.name + ".part")
    for attempt in range(retries + 1):
        try:
            _http_get(url, part)
            break
        except urllib.error.HTTPError as e:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}. " + _by_hand(url, final, expected)) from None
        except (http.client.IncompleteRead, ConnectionResetError, socket.timeout, TimeoutError) as e:
            if attempt == retries:
                raise DownloadError(f"{url}: the transfer kept breaking off ({e!r}); the partial file {part} is "
                                    f"kept and the next run resumes it. " + _by_hand(url, final, expected))
            time.sleep(0.2 * (attempt + 1))
        except (urllib.error.URLError, OSError) as e:
            if _local_failure(e):  # the partial file is kept: once there is room, the next run resumes it
                raise _cannot_write(part, e) from None
            reason = getattr(e, "reason", e)
            raise DownloadError(f"cannot reach {url} ({reason}). " + _by_hand(url, final, expected)) from None
    _verify(part, expected, None, url, url, final)
    # Not `minigpt2.atomic`: its temporary file is deleted when a write fails, while this `.part` file must outlive
    # a broken transfer (the next run resumes it with `Range`). The rename is what makes it final; a file whose
    # bytes a power cut lost is caught anyway, since every use verifies the sha256 first (`_verify` above).
    os.replace(part, final)
    lock.record(f"url:{url}", sha256=sha256_file(final))
    return final


def _http_get(url: str, part: Path) -> None:
    """Append the rest of `url` to `part` (resuming from its size), raising IncompleteRead if the body is short."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "minigpt2", **({"Range": f"bytes={have}-"} if have else {})}
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        if have and r.status != 206:  # server ignored Range: start over
            have = 0
        length = r.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                               desc=part.name.removesuffix(".part"),
                                                               leave=False) as bar:
            got = 0
            while block := r.read(1 << 16):
                out.write(block)
                got += len(block)
                bar.update(len(block))
    if length is not None and got < int(length):
        raise http.client.IncompleteRead(b"", int(length) - got)

