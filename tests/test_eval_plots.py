"""PR plots (PNG/SVG/PDF, legend, atomic writes), config hash, and metrics reports."""

from __future__ import annotations

import csv
import json
import threading

import numpy as np
import pytest

from explorer.core.errors import BadGroundTruth, ExplorerError
from explorer.core.evaluation import (
    config_hash,
    evaluate_scores,
    make_pr_figure,
    paired_comparison,
    plot_pr,
    write_metrics,
)


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(0)
    relevant = rng.random((12, 40)) < 0.2
    relevant[0] = False  # a query without relevant items -> NaN AP
    base = rng.random((12, 40))
    image = evaluate_scores(base, relevant, mode="image", ks=(1, 5))
    fused = evaluate_scores(base + 0.6 * relevant, relevant, mode="fused", ks=(1, 5))
    return [image, fused]


def test_legend_shows_modes_and_map(results):
    fig = make_pr_figure(results, title="PR", footer="pets (12 queries) | effnet + minilm | alpha 0.5 | abcd1234")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == [f"image (mAP {results[0].map_text})", f"fused (mAP {results[1].map_text})"]
    assert all(len(m.map_text) == 5 and m.map_text.startswith("0.") for m in results)
    assert ax.get_xlim() == (0.0, 1.0) and ax.get_ylim() == (0.0, 1.0)
    assert any("abcd1234" in t.get_text() for t in fig.texts)
    assert len(ax.get_lines()) == 2


def test_plot_pr_writes_png_svg_pdf(tmp_path, results):
    outs = [tmp_path / "pr.png", tmp_path / "sub" / "pr.svg", tmp_path / "pr.PDF"]
    written = plot_pr(results, outs, title="PR curves", footer="footer text")
    assert written == outs
    assert outs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in outs[1].read_text(encoding="utf-8")
    assert outs[2].read_bytes()[:5] == b"%PDF-"
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_png_is_150_dpi(tmp_path, results):
    from PIL import Image

    (p,) = plot_pr(results, [tmp_path / "x.png"], "t", "f")
    with Image.open(p) as im:
        assert im.size == (7 * 150, int(5.6 * 150))


def test_bad_plot_suffix_raises(tmp_path, results):
    with pytest.raises(ExplorerError, match=r"\.jpg") as ei:
        plot_pr(results, [tmp_path / "ok.png", tmp_path / "pr.jpg"], "t", "f")
    assert not isinstance(ei.value, BadGroundTruth)
    assert not (tmp_path / "ok.png").exists()  # nothing written when one path is bad


def test_figures_from_threads(results):
    errors = []

    def work():
        try:
            make_pr_figure(results, "t", "f").canvas.draw()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_config_hash_is_canonical():
    h = config_hash({"alpha": 0.5, "models": ["a", "b"], "rerank": None})
    assert len(h) == 8 and int(h, 16) >= 0
    assert h == config_hash({"rerank": None, "models": ["a", "b"], "alpha": 0.5})
    assert h != config_hash({"alpha": 0.6, "models": ["a", "b"], "rerank": None})


def test_write_metrics_json(tmp_path, results):
    cmp = paired_comparison(results[0].ap, results[1].ap, n_boot=500)
    meta = {"dataset": "pets", "alpha_sweep": [(0.0, 0.41), (0.5, 0.52)], "nan": float("nan")}
    queries = [f"/data/q{i}.jpg" for i in range(12)]
    (p,) = write_metrics(results, {"fused vs image": cmp}, tmp_path / "m.json", meta, queries)
    doc = json.loads(p.read_text())
    assert doc["meta"] == {"dataset": "pets", "nan": None}
    assert set(doc["modes"]) == {"image", "fused"}
    assert doc["modes"]["fused"]["map"] == pytest.approx(results[1].map)
    assert doc["per_query"][0] == {"query": "/data/q0.jpg", "ap": {"image": None, "fused": None}}
    assert doc["per_query"][1]["ap"]["fused"] == pytest.approx(results[1].ap[1])
    assert doc["comparisons"]["fused vs image"]["wins"] == cmp.wins
    assert doc["alpha_sweep"] == [{"alpha": 0.0, "map": 0.41}, {"alpha": 0.5, "map": 0.52}]
    assert "alpha_sweep" in meta  # the caller's dict is left alone


def test_write_metrics_csv(tmp_path, results):
    queries = [f"q{i}.jpg" for i in range(12)]
    cmp = paired_comparison(results[0].ap, results[1].ap, n_boot=200)
    written = write_metrics(results, {"fused vs image": cmp}, tmp_path / "m.csv", {}, queries)
    assert written == [tmp_path / "m.csv", tmp_path / "m_per_query.csv"]
    rows = list(csv.DictReader(written[0].open()))
    table = {(r["mode"], r["metric"]): r["value"] for r in rows}
    assert float(table[("image", "map")]) == pytest.approx(results[0].map)
    assert table[("fused", "n_queries_without_relevant")] == "1"
    assert float(table[("fused", "P@5")]) == pytest.approx(results[1].precision_at_k[5])
    assert float(table[("image", "R@1")]) == pytest.approx(results[0].recall_at_k[1])
    assert ("fused vs image", "sign_test_p") in table
    per_q = list(csv.reader(written[1].open()))
    assert per_q[0] == ["query", "ap_image", "ap_fused"]
    assert per_q[1] == ["q0.jpg", "", ""]
    assert float(per_q[2][2]) == pytest.approx(results[1].ap[1])


def test_write_metrics_bad_suffix(tmp_path, results):
    with pytest.raises(ExplorerError, match="use .json or .csv"):
        write_metrics(results, {}, tmp_path / "m.txt", {}, [str(i) for i in range(12)])


def test_outputs_are_not_private(tmp_path, results):
    (p,) = plot_pr(results, [tmp_path / "x.svg"], "t", "f")
    (j,) = write_metrics(results, {}, tmp_path / "m.json", {}, [str(i) for i in range(12)])
    ref = tmp_path / "ref.txt"
    ref.write_text("created the ordinary way")
    mode = ref.stat().st_mode & 0o777
    assert p.stat().st_mode & 0o777 == mode and j.stat().st_mode & 0o777 == mode
