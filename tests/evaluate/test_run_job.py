"""run_job end to end on synth: outputs, metrics against an independent computation, failures, shots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from zsad_bench.evaluate import run_job
from zsad_bench.results import read_result, validate_result

CATEGORIES = ("bottle_like", "skin_like")
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)


def _independent(data_root: Path, category: str, size: int = 32) -> tuple[list, list, np.ndarray, np.ndarray]:
    """Scores, labels, maps and masks of the mean-intensity method, computed here without the library."""
    base = data_root / "synth" / category
    scores, labels, maps, masks = [], [], [], []
    for img_path in sorted((base / "test").glob("*/*.png")):
        defect = img_path.parent.name
        img = Image.open(img_path).convert("RGB").resize((size, size), Image.BICUBIC)
        x = (torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1) - MEAN) / STD
        amap = x.mean(0).numpy()
        scores.append(float(amap.max()))
        labels.append(int(defect != "good"))
        maps.append(amap)
        if defect == "good":
            masks.append(np.zeros((size, size), bool))
        else:
            m = Image.open(base / "ground_truth" / defect / f"{img_path.stem}_mask.png").convert("L")
            masks.append(np.asarray(m.resize((size, size), Image.BILINEAR)) >= 128)
    return scores, labels, np.stack(maps), np.stack(masks)


@pytest.fixture
def ok_job(test_methods, make_cfg):
    cfg = make_cfg()
    brief = run_job(cfg)
    return cfg, brief, Path(brief["dir"])


def test_outputs_follow_the_schema(ok_job):
    _, brief, out = ok_job
    assert brief["status"] == "ok"
    data = read_result(out / "metrics.json")
    assert validate_result(data) == []
    assert data["evaluation"]["resolution"] == "input"
    assert data["evaluation"]["input_size"] == 32
    assert data["backbone"]["random_weights"] is True
    assert set(data["metric_definitions"]) >= {"image_auroc", "pixel_aupro"}
    assert data["timings"]["images"] == 20
    assert data["timings"]["images_per_s"] > 0
    assert data["skipped"] == []
    assert data["error"] is None
    for c in CATEGORIES:
        assert (out / "maps" / f"{c}.safetensors").is_file()
        assert (out / "curves" / f"{c}.npz").is_file()
        assert len(list((out / "maps" / c).glob("*.png"))) == 2
    rows = list(csv.DictReader((out / "per_category.csv").open()))
    assert [r["category"] for r in rows] == [*CATEGORIES, "mean"]
    for r in rows[:2]:
        assert float(r["pixel_aupro"]) == data["categories"][r["category"]]["metrics"]["pixel_aupro"]["value"]
    assert len(list(csv.DictReader((out / "scores.csv").open()))) == 20


def test_job_folder_is_deterministic(ok_job):
    cfg, _, out = ok_job
    assert out == Path(cfg.paths.results_root) / "default" / "mean_intensity" / "synth" / "test_tiny" / "k0_s0"


def test_metrics_match_an_independent_computation(ok_job, data_root):
    _, brief, out = ok_job
    data = json.loads((out / "metrics.json").read_text())
    image, pixel = [], []
    for c in CATEGORIES:
        scores, labels, maps, masks = _independent(data_root, c)
        got = data["categories"][c]["metrics"]
        image.append(roc_auc_score(labels, scores))
        pixel.append(roc_auc_score(masks.ravel(), maps.ravel()))
        assert got["image_auroc"]["value"] == pytest.approx(image[-1], abs=1e-9)
        assert got["pixel_auroc"]["value"] == pytest.approx(pixel[-1], abs=1e-6)
        assert data["categories"][c]["n_anomalous"] == sum(labels)
    assert brief["summary"]["image_auroc"] == pytest.approx(np.mean(image), abs=1e-9)
    assert brief["summary"]["pixel_auroc"] == pytest.approx(np.mean(pixel), abs=1e-6)


def test_background_workers_give_the_same_numbers(test_methods, make_cfg, tmp_path):
    a = run_job(make_cfg(results=tmp_path / "a"))
    b = run_job(make_cfg("eval.num_workers=1", "eval.batch_size=3", results=tmp_path / "b"))
    assert a["summary"] == b["summary"]


def test_native_resolution_is_recorded_and_scores_maps_at_mask_size(test_methods, make_cfg, data_root):
    brief = run_job(make_cfg("eval.resolution=native"))
    data = read_result(Path(brief["dir"]) / "metrics.json")
    assert data["evaluation"]["resolution"] == "native"
    _scores, _labels, maps, _ = _independent(data_root, "bottle_like")
    up = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=(96, 96), mode="bilinear")[:, 0]
    base = data_root / "synth" / "bottle_like"
    masks = []
    for p in sorted((base / "test").glob("*/*.png")):
        mpath = base / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
        masks.append(np.asarray(Image.open(mpath)) > 0 if mpath.is_file() else np.zeros((96, 96), bool))
    expected = roc_auc_score(np.stack(masks).ravel(), up.numpy().ravel())
    assert data["categories"]["bottle_like"]["metrics"]["pixel_auroc"]["value"] == pytest.approx(expected, abs=1e-6)


def test_a_fixed_resolution_scores_maps_and_masks_at_that_size(test_methods, make_cfg, data_root):
    brief = run_job(make_cfg("eval.resolution=40"))
    data = read_result(Path(brief["dir"]) / "metrics.json")
    assert data["evaluation"]["resolution"] == "40"
    assert data["evaluation"]["map_resampling"] == "bilinear to 40x40"
    _scores, _labels, maps, _ = _independent(data_root, "bottle_like")
    down = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=(40, 40), mode="bilinear")[:, 0]
    base = data_root / "synth" / "bottle_like"
    masks = []
    for p in sorted((base / "test").glob("*/*.png")):
        mpath = base / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
        full = Image.open(mpath).convert("L") if mpath.is_file() else Image.new("L", (96, 96))
        masks.append(np.asarray(full.resize((40, 40), Image.BILINEAR)) >= 128)
    expected = roc_auc_score(np.stack(masks).ravel(), down.numpy().ravel())
    assert data["categories"]["bottle_like"]["metrics"]["pixel_auroc"]["value"] == pytest.approx(expected, abs=1e-6)


def test_failed_image_is_recorded_and_skipped(test_methods, make_cfg):
    brief = run_job(make_cfg("method=flaky", "method.fail_defect=hole", "eval.max_skip_fraction=0.2"))
    data = read_result(Path(brief["dir"]) / "metrics.json")
    assert data["status"] == "ok"
    assert [(s["category"], s["stage"]) for s in data["skipped"]] == [(c, "predict") for c in CATEGORIES]
    assert all("cannot score hole" in s["reason"] and "/hole/" in s["key"] for s in data["skipped"])
    assert all(data["categories"][c]["n_images"] == 9 for c in CATEGORIES)


def test_non_finite_map_is_skipped(test_methods, make_cfg):
    brief = run_job(make_cfg("method=flaky", "method.nan_defect=stain", "eval.max_skip_fraction=0.2"))
    data = read_result(Path(brief["dir"]) / "metrics.json")
    assert data["status"] == "ok"
    assert len(data["skipped"]) == 2
    assert all("non-finite" in s["reason"] for s in data["skipped"])


def test_too_many_failed_images_fail_the_category(test_methods, make_cfg):
    brief = run_job(make_cfg("method=flaky", "method.fail_defect=hole"))  # 1 of 10 > 5 %
    data = read_result(Path(brief["dir"]) / "metrics.json")
    assert data["status"] == "failed"
    assert data["error"]["type"] == "AllCategoriesFailed"
    assert "max_skip_fraction" in data["categories"]["bottle_like"]["error"]["message"]


def test_unreadable_image_is_recorded_with_its_path(test_methods, make_cfg, data_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(data_root / "synth", root / "synth")
    broken = root / "synth" / "skin_like" / "test" / "good" / "001.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated
    brief = run_job(make_cfg(f"paths.data_root={root}", "eval.max_skip_fraction=0.2"))
    data = read_result(Path(brief["dir"]) / "metrics.json")
    assert data["status"] == "ok"
    (skip,) = data["skipped"]
    assert skip["stage"] == "decode"
    assert skip["path"] == str(broken)
    assert str(broken) in skip["reason"]


def test_failed_category_is_recorded_and_the_job_goes_on(test_methods, make_cfg):
    brief = run_job(make_cfg("method=flaky", "method.fail_category=skin_like"))
    data = read_result(Path(brief["dir"]) / "metrics.json")
    assert data["status"] == "partial"
    assert data["categories"]["skin_like"]["status"] == "failed"
    assert "skin_like is broken" in data["categories"]["skin_like"]["error"]["message"]
    ok = data["categories"]["bottle_like"]["metrics"]
    assert data["summary"]["image_auroc"]["value"] == ok["image_auroc"]["value"]


def test_failed_job_is_recorded_not_raised(test_methods, make_cfg):
    brief = run_job(make_cfg("method=flaky", "method.fail_setup=true"))
    assert brief["status"] == "failed"
    data = read_result(Path(brief["dir"]) / "metrics.json")
    assert data["error"]["type"] == "RuntimeError"
    assert "deliberately broken" in data["error"]["message"]
    assert "Traceback" in data["error"]["traceback"]


def test_unknown_method_knob_fails_the_job_clearly(test_methods, make_cfg):
    brief = run_job(make_cfg("+method.nosuch=1"))
    assert brief["status"] == "failed"
    assert "conf/method/mean_intensity.yaml" in brief["error"]["message"]


def test_unsupported_shots_are_marked_not_failed(test_methods, make_cfg):
    brief = run_job(make_cfg("shots=1"))
    assert brief["status"] == "unsupported"
    assert "supports shots [0]" in brief["error"]["message"]


def test_few_shot_references_are_seeded_training_normals(test_methods, make_cfg, tmp_path):
    a = read_result(
        Path(run_job(make_cfg("method=fewshot_probe", "shots=2", results=tmp_path / "a"))["dir"]) / "metrics.json"
    )
    b = read_result(
        Path(run_job(make_cfg("method=fewshot_probe", "shots=2", results=tmp_path / "b"))["dir"]) / "metrics.json"
    )
    assert a["status"] == "ok"
    for c in CATEGORIES:
        refs = a["categories"][c]["references"]
        assert len(refs) == 2
        assert all(f"synth/{c}/train/good/" in k for k in refs)
        assert refs == b["categories"][c]["references"]  # same seed, same draw
    others = [
        read_result(Path(run_job(make_cfg("method=fewshot_probe", "shots=2", f"seed={s}"))["dir"]) / "metrics.json")
        for s in (1, 2)
    ]
    assert any(
        o["categories"]["bottle_like"]["references"] != a["categories"]["bottle_like"]["references"] for o in others
    )


def test_trainable_methods_go_through_train_or_load(test_methods, make_cfg, monkeypatch):
    from zsad_bench.registry import METHODS

    calls = []
    monkeypatch.setattr(METHODS.get("mean_intensity"), "trainable", True)
    monkeypatch.setattr("zsad_bench.train.train_or_load", lambda m, cfg, ctx: calls.append(m) or {"checkpoint": "x"})
    data = read_result(Path(run_job(make_cfg())["dir"]) / "metrics.json")
    assert len(calls) == 1
    assert data["train"]["trainable"] is True
    assert data["train"]["info"] == {"checkpoint": "x"}
