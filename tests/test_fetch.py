"""`explorer models fetch`: downloads a real model only on request, resumable, checksum-verified,
from a local HTTP server on 127.0.0.1 that serves a tiny model in the hub's file layout."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from explorer.core.errors import ExplorerError
from explorer.core.models.fetch import fetch_model, repo_of

REPO = "tinyorg/tiny-blip"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A tiny randomly initialised BLIP captioner saved as a real one would be."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("tiny")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "."]
    (root / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = transformers.BertTokenizer(str(root / "vocab.txt"))
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    cfg = transformers.BlipConfig(
        vision_config=vision,
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=64, bos_token_id=2, eos_token_id=3, sep_token_id=3, pad_token_id=0),
        projection_dim=32, image_text_hidden_size=32,
    )
    out = root / "tiny-blip"
    transformers.BlipForConditionalGeneration(cfg).save_pretrained(out)
    transformers.BlipProcessor(image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(out)
    return out


class Hub:
    """A minimal model hub: the listing API and ``resolve`` URLs with Range support."""

    def __init__(self, folder: Path):
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_once: set[str] = set()  # files whose first download breaks off half-way
        self.corrupt: set[str] = set()

    def listing(self) -> dict:
        sib = []
        for name, data in self.files.items():
            item = {"rfilename": name, "size": len(data),
                    "blobId": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}  # noqa: S324
            if name.endswith(".safetensors"):
                item["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            sib.append(item)
        sib.append({"rfilename": "flax_model.msgpack", "size": 3, "blobId": "0" * 40})  # skipped: another framework
        return {"id": REPO, "sha": COMMIT, "siblings": sib}

    def serve(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                hub.requests.append((self.path, self.headers.get("Range")))
                if self.path.startswith(f"/api/models/{REPO}/revision/main"):
                    body = json.dumps(hub.listing()).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                prefix = f"/{REPO}/resolve/{COMMIT}/"
                name = self.path[len(prefix):] if self.path.startswith(prefix) else None
                if name not in hub.files:
                    self.send_error(404)
                    return
                data = hub.files[name]
                if name in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if name in hub.cut_once:
                    hub.cut_once.discard(name)
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data[start:])

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@pytest.fixture
def hub(tiny_blip):
    h = Hub(tiny_blip)
    server = h.serve()
    h.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield h
    server.shutdown()
    server.server_close()


def test_repo_of():
    assert repo_of("hf:Salesforce/blip-image-captioning-base") == "Salesforce/blip-image-captioning-base"
    assert repo_of("open_clip:ViT-B-32@hf-hub:laion/CLIP-ViT-B-32") == "laion/CLIP-ViT-B-32"
    assert repo_of("google/owlvit-base-patch32") == "google/owlvit-base-patch32"
    for bad in ("structured", "hf:../etc", "effnet-lite0:x/y"):
        with pytest.raises(ExplorerError):
            repo_of(bad)


def test_fetch_downloads_verifies_and_the_backend_loads_it(hub, tiny_blip, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_MODELS_DIR", str(tmp_path / "models"))
    seen = []
    res = fetch_model(f"hf:{REPO}", endpoint=hub.url, progress=lambda n, d, t: seen.append((d, t)))
    folder = tmp_path / "models" / "tinyorg--tiny-blip"
    assert res.folder == folder and res.revision == COMMIT
    for name, data in hub.files.items():
        assert (folder / name).read_bytes() == data
    assert not (folder / "flax_model.msgpack").exists() and not (folder / ".fetch").exists()
    assert seen and seen[-1][0] == seen[-1][1] == sum(len(d) for d in hub.files.values())
    assert json.loads((folder / "FETCHED.json").read_text())["revision"] == COMMIT
    # the fetched model is found by its repo id and captions images, through the real backend
    from PIL import Image

    from explorer.core.config import Settings
    from explorer.core.models.registry import ModelLoader

    captioner = ModelLoader(Settings(captioner=f"hf:{REPO}")).get("captioner")
    assert captioner.weights_path == str(folder)
    assert len(captioner.caption([Image.new("RGB", (40, 40), "red")])) == 1
    # a second run finds everything in place and downloads nothing
    n = len(hub.requests)
    again = fetch_model(f"hf:{REPO}", endpoint=hub.url)
    assert again.downloaded_bytes == 0 and len(again.already_there) == len(hub.files)
    assert len(hub.requests) == n + 1  # only the listing


def test_fetch_resumes_a_broken_download(hub, tmp_path):
    weights = next(n for n in hub.files if n.endswith(".safetensors"))
    hub.cut_once.add(weights)
    dest = tmp_path / "m"
    with pytest.raises(ExplorerError, match="stopped early.*resume"):
        fetch_model(f"hf:{REPO}", dest=dest, endpoint=hub.url)
    part = dest / ".fetch" / (weights + ".part")
    assert 0 < part.stat().st_size < len(hub.files[weights]) and not (dest / weights).exists()
    res = fetch_model(f"hf:{REPO}", dest=dest, endpoint=hub.url)
    assert weights in res.resumed
    ranges = [h for r, h in hub.requests if r == f"/{REPO}/resolve/{COMMIT}/{weights}" and h]
    assert ranges == [f"bytes={len(hub.files[weights]) // 2}-"]  # asked only for the missing half
    assert (dest / weights).read_bytes() == hub.files[weights]


def test_fetch_rejects_a_corrupt_file(hub, tmp_path):
    weights = next(n for n in hub.files if n.endswith(".safetensors"))
    hub.corrupt.add(weights)
    with pytest.raises(ExplorerError, match="checksum mismatch"):
        fetch_model(f"hf:{REPO}", dest=tmp_path / "m", endpoint=hub.url)
    assert not (tmp_path / "m" / weights).exists() and not (tmp_path / "m" / ".fetch" / (weights + ".part")).exists()


def test_fetch_without_network_says_so(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    with pytest.raises(ExplorerError, match="cannot reach .*no network"):
        fetch_model(f"hf:{REPO}", dest=tmp_path / "m", endpoint=f"http://127.0.0.1:{port}", timeout=5)
    assert not (tmp_path / "m").exists()


def test_cli_models_fetch(hub, tmp_path, capsys):
    from explorer.cli import main

    rc = main(["models", "fetch", f"hf:{REPO}", "--endpoint", hub.url, "--dest", str(tmp_path / "m"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "checksums verified" in out and f"--captioner hf:{REPO}" in out
    rc = main(["models", "fetch", "structured"])
    assert rc == 2 and "cannot fetch" in capsys.readouterr().err
