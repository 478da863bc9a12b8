"""Download a real model into ``models/``, only when the user asks (``explorer models fetch SPEC``).

The app never downloads on its own; this is the one place that may, and only on request.
It speaks the Hugging Face hub's plain HTTP layout (``$HF_ENDPOINT``, default the hub):

- ``GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true`` lists the files with their
  sizes, their git blob ids, and for large (LFS) files their SHA-256;
- ``GET {endpoint}/{repo}/resolve/{commit}/{file}`` serves each file, with ``Range`` support.

Files land in ``models/ORG--NAME/`` (where every backend looks, see ``weights.local_dir_for``),
through ``.part`` files that a later run resumes with a ``Range`` request. Each file is checked
against its SHA-256 (LFS) or git blob id (small files) before it is renamed into place, so a
corrupt or truncated file is never left looking complete. Without network the error says so
in one line and what was downloaded so far is kept for the next try.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ExplorerError
from .weights import models_dir

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
#: formats other frameworks use; the backends here read safetensors / PyTorch bins and configs
SKIP = ("*.msgpack", "*.h5", "tf_model*", "flax_model*", "rust_model*", "*.ot", "*.onnx", "*.onnx_data", "*.tflite",
        "*.mlmodel", "*.mlpackage/*", "coreml/*", "onnx/*", "openvino/*", ".gitattributes")
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class FetchResult:
    repo: str
    revision: str
    folder: Path
    files: list[str] = field(default_factory=list)
    downloaded_bytes: int = 0
    resumed: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)

    def use_hint(self, spec: str) -> str:
        kind = spec.split(":", 1)[0] if ":" in spec and not spec.startswith(("http",)) else "hf"
        if kind == "open_clip":
            return f"--image-encoder open_clip:{self.repo} --text-encoder open_clip:{self.repo}"
        flag = {"hf": "--captioner", "hf-detr": "--detector", "hf-owlvit": "--detector"}.get(kind, "--captioner")
        return f"{flag} {kind}:{self.repo}"


def repo_of(spec: str) -> str:
    """``hf:ORG/NAME``, ``hf-detr:…``, ``hf-owlvit:…``, ``open_clip:ORG/NAME``, ``open_clip:ARCH@ORG/NAME``
    (or ``hf-hub:ORG/NAME``) or a bare ``ORG/NAME`` -> ``ORG/NAME``."""
    s = spec.strip()
    if ":" in s:
        kind, _, rest = s.partition(":")
        if kind not in ("hf", "hf-detr", "hf-owlvit", "open_clip"):
            raise ExplorerError(f"cannot fetch '{spec}': give hf:ORG/NAME, hf-detr:ORG/NAME, hf-owlvit:ORG/NAME or open_clip:ORG/NAME")
        s = rest.split("@", 1)[1] if "@" in rest else rest
        s = s.removeprefix("hf-hub:")
    if not _REPO.fullmatch(s) or ".." in s:
        raise ExplorerError(f"cannot fetch '{spec}': '{s}' is not a model repository name (ORG/NAME)")
    return s


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _open(url: str, timeout: float, headers: dict | None = None):
    req = urllib.request.Request(url, headers={"User-Agent": "retrieval-explorer", **(headers or {})})
    token = os.environ.get("HF_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) endpoint chosen by the user


def _net_error(e: Exception, endpoint: str) -> ExplorerError:
    if isinstance(e, urllib.error.HTTPError):
        if e.code in (401, 403):
            return ExplorerError(f"{endpoint} refused access (HTTP {e.code}): the model may be gated; set HF_TOKEN")
        if e.code == 404:
            return ExplorerError(f"not found on {endpoint} (HTTP 404): check the model name and revision")
        return ExplorerError(f"{endpoint} answered HTTP {e.code} {e.reason}")
    reason = getattr(e, "reason", e)
    return ExplorerError(f"cannot reach {endpoint} ({reason}): no network? Downloaded parts are kept; run the same command again to resume")


def _wanted(files: list[dict]) -> list[dict]:
    names = {f["rfilename"] for f in files}
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    out = []
    for f in files:
        n = f["rfilename"]
        if any(fnmatch.fnmatch(n, pat) for pat in SKIP):
            continue
        if has_safetensors and n.endswith(".bin") and ("pytorch_model" in n or "open_clip_pytorch_model" in n):
            continue  # the same weights in the older format
        if n.startswith("/") or ".." in Path(n).parts:
            raise ExplorerError(f"refusing a file name that leaves the model folder: {n!r}")
        out.append(f)
    return out


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()  # noqa: S324 - git's object id, compared with the hub's blobId
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, info: dict) -> str | None:
    """None when the file matches the listing, else why not."""
    lfs = info.get("lfs") or {}
    size = lfs.get("size", info.get("size"))
    if size is not None and path.stat().st_size != int(size):
        return f"size {path.stat().st_size} != {size}"
    if lfs.get("sha256"):
        got = _sha256(path)
        return None if got == lfs["sha256"] else f"sha256 {got[:12]}… != {lfs['sha256'][:12]}…"
    if info.get("blobId"):
        got = _git_blob_sha1(path)
        return None if got == info["blobId"] else f"git blob id {got[:12]}… != {info['blobId'][:12]}…"
    return "the listing gives no checksum for it"


def fetch_model(
    spec: str,
    dest: str | os.PathLike | None = None,
    endpoint: str | None = None,
    revision: str = "main",
    progress: Callable[[str, int, int], None] | None = None,
    timeout: float = 30.0,
) -> FetchResult:
    """Download ``spec``'s repository into ``dest`` (default ``models/ORG--NAME``); see the module docstring.
    ``progress(file, bytes_done, bytes_total)`` is called as bytes arrive (totals over all files)."""
    repo = repo_of(spec)
    ep = _endpoint(endpoint)
    if not ep.startswith(("http://", "https://")):
        raise ExplorerError(f"the endpoint must be an http(s) URL, got {ep!r}")
    folder = Path(dest).expanduser() if dest else models_dir() / repo.replace("/", "--")
    q = urllib.parse.quote
    try:
        with _open(f"{ep}/api/models/{q(repo)}/revision/{q(revision, safe='')}?blobs=true", timeout) as r:
            listing = json.loads(r.read(16 << 20).decode("utf-8"))
    except (urllib.error.URLError, OSError, socket.timeout) as e:
        raise _net_error(e, ep) from None
    except ValueError as e:
        raise ExplorerError(f"{ep} did not answer with a model listing ({e})") from None
    if not isinstance(listing, dict) or not isinstance(listing.get("siblings"), list):
        raise ExplorerError(f"{ep} did not answer with a model listing for {repo}")
    commit = str(listing.get("sha") or revision)
    files = _wanted([f for f in listing["siblings"] if isinstance(f, dict) and isinstance(f.get("rfilename"), str)])
    if not files:
        raise ExplorerError(f"{repo} has no files this app can use")
    res = FetchResult(repo, commit, folder)
    partdir = folder / ".fetch"
    total = sum(int((f.get("lfs") or {}).get("size", f.get("size") or 0)) for f in files)
    done = 0
    for info in files:
        name = info["rfilename"]
        final = folder / name
        res.files.append(name)
        size = int((info.get("lfs") or {}).get("size", info.get("size") or 0))
        if final.is_file() and _verify(final, info) is None:
            res.already_there.append(name)
            done += size
            if progress:
                progress(name, done, total)
            continue
        part = partdir / (name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.is_file() else 0
        if size and have > size:
            part.unlink()
            have = 0
        url = f"{ep}/{q(repo)}/resolve/{q(commit, safe='')}/{q(name)}"
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with _open(url, timeout, headers) as r:
                mode = "ab" if have and r.status == 206 else "wb"
                if mode == "ab":
                    res.resumed.append(name)
                else:
                    have = 0
                done += have
                with open(part, mode) as f:
                    while True:
                        chunk = r.read(CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        done += len(chunk)
                        res.downloaded_bytes += len(chunk)
                        if progress:
                            progress(name, done, total)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # asked past the end: the part is complete already
                pass
            else:
                raise _net_error(e, ep) from None
        except (urllib.error.URLError, OSError, socket.timeout, http.client.HTTPException) as e:
            if not part.is_file() or not part.stat().st_size:
                raise _net_error(e, ep) from None
            # the connection broke mid-file: what arrived is kept; the check below says it is short
        why = _verify(part, info)
        if why is not None:
            if part.stat().st_size < size:
                raise ExplorerError(f"{name}: the download stopped early ({part.stat().st_size} of {size} bytes); "
                                    "run the same command again to resume")
            part.unlink()
            raise ExplorerError(f"{name}: checksum mismatch ({why}); the broken file was removed, nothing was installed")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
    manifest = {"repo": repo, "revision": commit, "endpoint": ep, "files": res.files}
    (folder / "FETCHED.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    try:
        for p in sorted(partdir.rglob("*"), reverse=True):
            if p.is_dir():
                p.rmdir()
        partdir.rmdir()
    except OSError:
        pass
    return res
