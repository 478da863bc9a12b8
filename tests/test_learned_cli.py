"""The learned-fused mode end to end through the CLI: train, search, evaluate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from safetensors import safe_open


def run(*args):
    return subprocess.run([sys.executable, "-m", "explorer", *args], capture_output=True, text=True, timeout=600)


def test_train_search_eval_with_learned_mode(tmp_path, indexed_sample, sample_gallery):
    lib = tmp_path / "lib"
    shutil.copytree(indexed_sample.dir, lib)
    head = tmp_path / "models" / "fusion-sample.safetensors"
    head.parent.mkdir()
    r = run("train-fusion", "--library", str(lib), "--gt", f"folders:{sample_gallery}", "--out", str(head),
            "--epochs", "2", "--threads", "1", "--quiet", "--json", str(tmp_path / "train.json"))
    assert r.returncode == 0, r.stderr
    assert "kept epoch" in r.stdout and head.is_file()
    # the k-fold check (5 folds over labels by default) ends the output
    assert "5-fold open-set" in r.stdout and "| pooled |" in r.stdout.strip().splitlines()[-3]
    with safe_open(str(head), "pt") as f:  # plain safetensors with the feature config in its metadata
        meta = f.metadata()
    assert "effnet-lite0" in json.dumps(meta)
    report = json.loads((tmp_path / "train.json").read_text())
    assert report["epochs"] and len(report["kfold"]["folds"]) == 5 and report["kfold"]["protocol"] == "open-set"
    r = run("search", "--library", str(lib), "--image", str(sample_gallery / "cat" / "chelsea.jpg"), "--head", str(head),
            "--k", "3", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d["modes"]) == {"image", "fused", "caption", "learned"}
    assert d["modes"]["learned"]["hits"][0]["path"].rsplit("/", 2)[-2] == "cat"
    r = run("eval", "--library", str(lib), "--gt", f"folders:{sample_gallery}", "--head", str(head), "--quiet", "--out", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    assert "learned" in r.stdout and "image_vs_learned" in r.stdout
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a safetensors file")
    r = run("search", "--library", str(lib), "--text", "cat", "--head", str(bad))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
