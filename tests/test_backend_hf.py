"""Hugging Face captioner and detector backends, end to end with tiny randomly initialised models.

Every model here is built from a config, saved with ``save_pretrained`` (tokenizers written from
a hand-made vocabulary: no downloads) and loaded back through ``ModelLoader``, the same path
that loads real weights.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from explorer.core.config import Settings  # noqa: E402
from explorer.core.errors import ModelUnavailable  # noqa: E402
from explorer.core.models.base import Caption, Detection  # noqa: E402
from explorer.core.models.registry import ModelLoader, probe  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "the", "cat", "dog", "on", "in",
         "red", "blue", "person", "car", "bag", "shoe", "dress", "shirt", "cup", "."]
DETR_LABELS = {0: "cat", 1: "dog", 2: "car"}
OWL_LABELS = ("person", "bag", "cat")


def _bert_tokenizer(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return transformers.BertTokenizer(str(folder / "vocab.txt"))


def _clip_tokenizer(folder: Path):
    """A character-level CLIP BPE tokenizer: '!' (pad, id 0), letters, then <start>/<end> last like real CLIP."""
    vocab = {"!": 0}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!", model_max_length=16)


TINY_VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-models")
    torch.manual_seed(0)
    tok = _bert_tokenizer(root / "vocab")
    out = {}

    blip_cfg = transformers.BlipConfig(
        vision_config=TINY_VISION,
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=2, eos_token_id=3, sep_token_id=3, pad_token_id=0),
        projection_dim=32, image_text_hidden_size=32,
    )
    out["blip"] = root / "tiny-blip"
    transformers.BlipForConditionalGeneration(blip_cfg).save_pretrained(out["blip"])
    transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
    ).save_pretrained(out["blip"])

    git_cfg = transformers.GitConfig(
        vision_config=TINY_VISION, vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )
    out["git"] = root / "tiny-git"
    transformers.GitForCausalLM(git_cfg).save_pretrained(out["git"])
    transformers.GitProcessor(
        image_processor=transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    ).save_pretrained(out["git"])

    detr_cfg = transformers.DetrConfig(
        backbone_config=transformers.ResNetConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1],
            layer_type="basic", out_features=["stage4"],
        ),
        use_pretrained_backbone=False, num_queries=12, encoder_layers=1, decoder_layers=1, d_model=16,
        encoder_ffn_dim=16, decoder_ffn_dim=16, encoder_attention_heads=2, decoder_attention_heads=2,
        id2label=DETR_LABELS, label2id={v: k for k, v in DETR_LABELS.items()},
    )
    out["detr"] = root / "tiny-detr"
    transformers.DetrForObjectDetection(detr_cfg).save_pretrained(out["detr"])
    transformers.DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(out["detr"])

    ctok = _clip_tokenizer(root / "clip-vocab")
    owl_cfg = transformers.OwlViTConfig(
        text_config=dict(vocab_size=len(ctok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=ctok.bos_token_id, eos_token_id=ctok.eos_token_id, pad_token_id=0),
        vision_config=TINY_VISION, projection_dim=32,
    )
    out["owlvit"] = root / "tiny-owlvit"
    owl = transformers.OwlViTForObjectDetection(owl_cfg)
    with torch.no_grad():  # random box heads saturate the sigmoid into zero-width boxes; stay near the patch priors
        for p in owl.box_head.parameters():
            p.mul_(0.01)
    owl.save_pretrained(out["owlvit"])
    transformers.OwlViTProcessor(
        image_processor=transformers.OwlViTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=ctok,
    ).save_pretrained(out["owlvit"])
    return out


def _images(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    sizes = [(120, 80), (50, 90), (64, 64), (33, 47)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for (w, h) in sizes[:n]]


# --------------------------------------------------------------------------- captioner


@pytest.mark.parametrize("kind", ["blip", "git"])
def test_captioner_one_caption_per_image_batched(hf_models, kind):
    spec = f"hf:{hf_models[kind]}"
    settings = Settings(captioner=spec)
    assert probe("captioner", settings).ready
    captioner = ModelLoader(settings).get("captioner")
    assert captioner.model_id == f"hf:{hf_models[kind]}"
    captioner.batch_size = 2  # three images -> two batches
    images = _images(3)
    caps = captioner.caption(images + [images[0]])
    assert len(caps) == 4
    for c in caps:
        assert isinstance(c, Caption) and isinstance(c.text, str)
        assert c.source == "generated" and c.model_id == captioner.model_id
        assert 0.0 <= c.confidence <= 1.0
        assert "[CLS]" not in c.text and "[SEP]" not in c.text
    assert caps[3] == caps[0]  # same image, same caption (greedy)
    assert captioner.caption([]) == []


@pytest.mark.parametrize("kind", ["blip", "git"])
def test_caption_confidence_is_mean_token_probability(hf_models, kind):
    captioner = ModelLoader(Settings(captioner=f"hf:{hf_models[kind]}")).get("captioner")
    image = _images(1)
    cap = captioner.caption(image)[0]
    pixel_values = captioner.image_processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = captioner.model.generate(pixel_values=pixel_values, max_new_tokens=30, do_sample=False,
                                       output_scores=True, return_dict_in_generate=True)
    scores = captioner.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
    new = out.sequences[0, out.sequences.shape[1] - len(out.scores):].tolist()
    n = next((i + 1 for i, t in enumerate(new) if t in captioner.eos_ids), len(new))
    expected = float(np.exp(scores[:n].numpy()).mean())
    if cap.text:
        assert cap.confidence == pytest.approx(expected, abs=1e-4)


def test_captioner_found_under_models_dir_by_repo_id(hf_models, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(hf_models["blip"], tmp_path / "tinyorg--tiny-blip")
    monkeypatch.setenv("EXPLORER_MODELS_DIR", str(tmp_path))
    captioner = ModelLoader(Settings(captioner="hf:tinyorg/tiny-blip")).get("captioner")
    assert captioner.model_id == "hf:tinyorg/tiny-blip"
    assert captioner.weights_path == str(tmp_path / "tinyorg--tiny-blip")
    assert len(captioner.caption(_images(2))) == 2


def test_missing_captioner_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(ModelUnavailable) as err:
        ModelLoader(Settings(captioner="hf:tinyorg/absent-captioner")).get("captioner")
    msg = str(err.value)
    assert "\n" not in msg and "config.json" in msg
    assert str(tmp_path / "models" / "tinyorg--absent-captioner") in msg

    missing = tmp_path / "no-such-folder"
    with pytest.raises(ModelUnavailable) as err:
        ModelLoader(Settings(captioner=f"hf:{missing}")).get("captioner")
    assert str(missing) in str(err.value) and "config.json" in str(err.value)

    availability = probe("captioner", Settings(captioner=f"hf:{missing}"))
    assert not availability.ready and str(missing) in availability.hint


def test_captioner_rejects_a_folder_without_weights_or_of_another_kind(hf_models, tmp_path):
    empty = tmp_path / "half"
    empty.mkdir()
    (empty / "config.json").write_text((hf_models["blip"] / "config.json").read_text())
    with pytest.raises(ModelUnavailable, match="no weights"):
        ModelLoader(Settings(captioner=f"hf:{empty}")).get("captioner")
    with pytest.raises(ModelUnavailable, match="'detr' model"):
        ModelLoader(Settings(captioner=f"hf:{hf_models['detr']}")).get("captioner")


# --------------------------------------------------------------------------- detectors


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _check_detections(result, images, labels):
    assert isinstance(result, list) and len(result) == len(images)
    for dets, im in zip(result, images):
        assert isinstance(dets, list)
        for d in dets:
            assert isinstance(d, Detection) and d.label in labels
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 < x2 <= im.width and 0 <= y1 < y2 <= im.height
            assert 0.0 <= d.score <= 1.0
        assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
        for a, b in combinations(dets, 2):
            if a.label == b.label:
                assert _iou(a.box, b.box) <= 0.5 + 1e-6


def test_detr_detects_in_pixel_coordinates(hf_models):
    settings = Settings(detector=f"hf-detr:{hf_models['detr']}", detector_threshold=0.0)
    assert probe("detector", settings).ready
    detector = ModelLoader(settings).get("detector")
    assert detector.model_id == f"hf-detr:{hf_models['detr']}"
    images = _images(2)
    result = detector.detect(images)
    _check_detections(result, images, set(DETR_LABELS.values()))
    assert all(len(dets) >= 1 for dets in result)  # threshold 0 keeps something
    assert detector.detect([]) == []

    strict = ModelLoader(Settings(detector=f"hf-detr:{hf_models['detr']}", detector_threshold=1.0)).get("detector")
    assert strict.detect(images) == [[], []]


def test_owlvit_looks_for_the_configured_labels(hf_models):
    settings = Settings(detector=f"hf-owlvit:{hf_models['owlvit']}", detector_threshold=0.0, detector_labels=OWL_LABELS)
    assert probe("detector", settings).ready
    detector = ModelLoader(settings).get("detector")
    assert detector.model_id.startswith(f"hf-owlvit:{hf_models['owlvit']}[") and detector.model_id.endswith("]")
    detector.batch_size = 2
    images = _images(3)
    result = detector.detect(images)
    _check_detections(result, images, set(OWL_LABELS))
    assert all(len(dets) >= 1 for dets in result)

    other = ModelLoader(Settings(detector=settings.detector, detector_labels=("cup",))).get("detector")
    assert other.model_id != detector.model_id  # the labels are part of the id
    _check_detections(other.detect(images[:1]), images[:1], {"cup"})


def test_nms_is_per_label_and_boxes_are_clipped():
    from explorer.core.models.hf_detector import _nms_and_convert

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11], [-5, -5, 500, 500], [50, 50, 50, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95])
    labels = torch.tensor([0, 0, 1, 0, 0])
    dets = _nms_and_convert(boxes, scores, labels, lambda i: ["a", "b"][i], width=100, height=80)
    assert [(d.label, round(d.score, 2)) for d in dets] == [("a", 0.9), ("b", 0.7), ("a", 0.6)]
    assert dets[2].box == (0.0, 0.0, 100.0, 80.0)  # clipped; the empty box was dropped


def test_missing_detector(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_MODELS_DIR", str(tmp_path))
    for spec in ("hf-detr:facebook/absent-detr", "hf-owlvit:google/absent-owlvit"):
        with pytest.raises(ModelUnavailable) as err:
            ModelLoader(Settings(detector=spec)).get("detector")
        assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
        assert not probe("detector", Settings(detector=spec)).ready


def test_owlvit_without_labels(hf_models):
    settings = Settings(detector=f"hf-owlvit:{hf_models['owlvit']}", detector_labels=())
    assert not probe("detector", settings).ready
    with pytest.raises(ModelUnavailable, match="detector_labels"):
        ModelLoader(settings).get("detector")
