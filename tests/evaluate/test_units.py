"""Unit tests: result schema and resume rule, preprocessing, the k-shot sampler, building methods."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsad_bench.build import build_method, method_config
from zsad_bench.preprocess import PreprocessSpec, mask_to_input, preprocess_image, resize_maps
from zsad_bench.registry import METHODS
from zsad_bench.results import (
    SCHEMA,
    SCHEMA_VERSION,
    config_fingerprint,
    finished_result,
    metric_entry,
    read_result,
    validate_result,
    write_json_atomic,
)
from zsad_bench.shots import sample_shots
from zsad_bench.types import Method, SampleRecord


# ----------------------------------------------------------------------------- schema
def minimal_result(status: str = "ok", fingerprint: str = "abc") -> dict:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "job": {"config_fingerprint": fingerprint},
        "method": {"name": "m"},
        "backbone": {},
        "train": {},
        "test": {"dataset": "d"},
        "shots": 0,
        "seed": 0,
        "evaluation": {},
        "metric_definitions": {},
        "code": {},
        "timings": {},
        "categories": {"c": {"status": "ok", "metrics": {"image_auroc": {"value": 0.5, "reason": None}}}},
        "summary": {"image_auroc": {"value": 0.5, "reason": None}},
        "skipped": [],
        "error": None,
    }


def test_validate_result_names_each_problem():
    assert validate_result(minimal_result()) == []
    bad = minimal_result()
    del bad["seed"]
    bad["categories"] = []
    problems = validate_result(bad)
    assert any("'seed'" in p for p in problems)
    assert any("'categories'" in p for p in problems)
    newer = {**minimal_result(), "schema_version": SCHEMA_VERSION + 1}
    assert any("schema_version" in p for p in validate_result(newer))
    assert any("status" in p for p in validate_result({**minimal_result(), "status": "weird"}))


def test_read_result_errors_name_the_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=str(path)):
        read_result(path)


def test_write_json_atomic_stores_nan_as_null(tmp_path):
    path = tmp_path / "a" / "metrics.json"
    write_json_atomic(path, {"x": float("nan"), "y": [float("inf"), 1.0], "p": Path("/z")})
    assert json.loads(path.read_text()) == {"x": None, "y": [None, 1.0], "p": "/z"}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_metric_entry_keeps_reason_and_bound():
    assert metric_entry(float("nan"), "no anomalous pixels") == {"value": None, "reason": "no anomalous pixels"}
    assert metric_entry(0.25, None, 1e-5) == {"value": 0.25, "reason": None, "bound": 1e-5}


@pytest.mark.parametrize(
    ("status", "fingerprint", "retry", "reused"),
    [
        ("ok", "abc", True, True),
        ("partial", "abc", True, True),
        ("unsupported", "abc", True, True),
        ("failed", "abc", True, False),
        ("failed", "abc", False, True),
        ("ok", "other", True, False),
    ],
)
def test_resume_rule(tmp_path, status, fingerprint, retry, reused):
    write_json_atomic(tmp_path / "metrics.json", minimal_result(status, "abc"))
    assert (finished_result(tmp_path, fingerprint, retry_failed=retry) is not None) is reused


def test_resume_rule_without_a_result(tmp_path):
    assert finished_result(tmp_path / "missing", "abc") is None


def test_fingerprint_ignores_execution_knobs_only():
    base = {"method": {"name": "m", "k": 1}, "eval": {"num_workers": 0, "batch_size": 8}, "paths": {"x": "/a"}}
    same = {**base, "eval": {"num_workers": 4, "batch_size": 8}, "paths": {"x": "/b"}, "device": "cuda"}
    other = {**base, "method": {"name": "m", "k": 2}}
    assert config_fingerprint(base) == config_fingerprint(same)
    assert config_fingerprint(base) != config_fingerprint(other)


# ----------------------------------------------------------------------------- preprocessing
def test_mask_to_input_follows_bilinear_then_half_threshold():
    mask = np.zeros((8, 8), bool)
    mask[0:3, 0:3] = True  # 3x3 corner: covers > half of the first 4x4 cell only where bilinear says so
    got = mask_to_input(mask, 2)
    ref = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((2, 2), Image.BILINEAR)) / 255 > 0.5
    np.testing.assert_array_equal(got, ref)


def test_preprocess_image_squashes_and_normalises():
    img = Image.fromarray(np.full((10, 30, 3), 255, np.uint8))
    spec = PreprocessSpec(size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = preprocess_image(img, spec)
    assert x.shape == (3, 8, 8)
    torch.testing.assert_close(x, torch.full((3, 8, 8), 2.0))  # (1 - 0.5) / 0.25


def test_preprocess_spec_errors_name_the_key():
    with pytest.raises(KeyError, match="input_size"):
        PreprocessSpec.from_cfg({"name": "b"})
    with pytest.raises(ValueError, match=r"eval\.resolution"):
        PreprocessSpec(size=8, resolution="half")
    with pytest.raises(ValueError, match="positive integer"):
        PreprocessSpec(size=8, resolution="0")
    assert [PreprocessSpec(size=8, resolution=r).eval_size for r in ("input", "native", "12")] == [8, None, 12]


def test_resize_maps_to_native_size():
    maps = torch.arange(4.0).view(1, 2, 2)
    assert resize_maps(maps, (2, 2)) is maps
    assert resize_maps(maps, (5, 3)).shape == (1, 5, 3)


# ----------------------------------------------------------------------------- shots
def _records(split: str, n: int, label: int = 0) -> list[SampleRecord]:
    return [SampleRecord(Path(f"/d/c/{split}/{i:03d}.png"), label, None, "c", "good", split, "d") for i in range(n)]


def test_shots_are_seeded_training_normals():
    train = _records("train", 6) + [SampleRecord(Path("/d/c/train/bad.png"), 1, None, "c", "x", "train", "d")]
    a = sample_shots(train, 2, seed=0)
    assert a == sample_shots(list(reversed(train)), 2, seed=0)  # independent of the listing order
    assert all(r.label == 0 and r.split == "train" for r in a)
    draws = {tuple(r.image_path.name for r in sample_shots(train, 2, seed=s)) for s in range(10)}
    assert len(draws) > 1


def test_shots_refuse_test_images_and_too_few_candidates():
    train = _records("train", 3)
    with pytest.raises(ValueError, match="fewer than shots=4"):
        sample_shots(train, 4, seed=0)
    with pytest.raises(ValueError, match="also a test image"):
        sample_shots(train, 1, seed=0, test=train[:1])


# ----------------------------------------------------------------------------- build
class _Knobbed(Method):
    @dataclass
    class Config:
        k: int = 3
        name_words: str = "x"


@pytest.fixture
def knobbed():
    METHODS.add("knobbed_test", _Knobbed)
    yield
    METHODS.unregister("knobbed_test")


def test_build_method_validates_against_the_config_dataclass(knobbed):
    m = build_method({"name": "knobbed_test", "k": 5})
    assert isinstance(m, _Knobbed)
    assert m.cfg == _Knobbed.Config(k=5)
    with pytest.raises(ValueError, match=r"conf/method/knobbed_test\.yaml.*Known keys: k, name_words"):
        build_method({"name": "knobbed_test", "kk": 5})
    with pytest.raises(ValueError, match="knobbed_test"):
        build_method({"name": "knobbed_test", "k": "many"})
    with pytest.raises(KeyError, match="no 'name'"):
        method_config({"k": 1})
    with pytest.raises(KeyError, match="unknown method"):
        build_method({"name": "knobbed_tset"})


def test_a_mapping_knob_given_replaces_its_default():
    default = method_config({"name": "april_gan"})[1].mosaic
    assert default == {"mvtec_ad": 0.2}
    assert method_config({"name": "april_gan", "mosaic": {}})[1].mosaic == {}
    assert method_config({"name": "april_gan", "mosaic": {"visa": 0.5}})[1].mosaic == {"visa": 0.5}
    with pytest.raises(ValueError, match="april_gan"):
        method_config({"name": "april_gan", "mosaic": {"visa": "often"}})


def test_nan_is_never_written_as_zero(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"summary": {"pixel_aupro": metric_entry(math.nan, "no masks")}})
    assert json.loads((tmp_path / "m.json").read_text())["summary"]["pixel_aupro"]["value"] is None
