"""Backbone configs: YAML files agree with the registered defaults; validation; layer selection."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from zsad_bench.backbones import BackboneConfig, build_backbone, default_config
from zsad_bench.registry import BACKBONES

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"
TRANSFORM_KEYS = ("input_size", "mean", "std", "interpolation")


def test_every_registered_backbone_has_a_yaml_and_back():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == BACKBONES.list()


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_yaml_equals_registered_defaults(name):
    raw = OmegaConf.load(CONF / f"{name}.yaml")
    assert raw.name == name
    for key in TRANSFORM_KEYS:  # the evaluation loop builds its transform from these
        assert key in raw, f"{name}.yaml lacks {key}"
    cfg = OmegaConf.merge({"paths": {"weights_root": "/w"}}, {"backbone": raw}).backbone
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["weights_root"] == "/w"
    plain.pop("weights_root")
    assert BackboneConfig.from_mapping(default_config(name), plain) == default_config(name)


def test_yaml_weights_root_is_null_without_a_paths_group():
    raw = OmegaConf.load(CONF / "tiny_clip.yaml")
    assert OmegaConf.to_container(raw, resolve=True)["weights_root"] is None


def test_unknown_key_and_bad_values_are_rejected():
    with pytest.raises(ValueError, match=r"unknown backbone config key.*'colour'"):
        build_backbone({"name": "tiny_clip", "colour": "red"})
    with pytest.raises(ValueError, match="activation='relu'"):
        build_backbone({"name": "tiny_clip", "activation": "relu"})
    with pytest.raises(ValueError, match="pos_interp"):
        build_backbone({"name": "tiny_clip", "pos_interp": "nearest"})
    with pytest.raises(KeyError, match="no 'name'"):
        build_backbone({})
    with pytest.raises(KeyError, match="Did you mean tiny_clip"):
        build_backbone({"name": "tiny_clipp"})


def test_layer_map_negative_layers_and_range():
    bb = build_backbone({"name": "tiny_clip"})
    assert bb.resolve_layers([6, 12, 18, 24]) == {6: 1, 12: 2, 18: 3, 24: 4}
    assert bb.resolve_layers([-1, 2, 2]) == {-1: 4, 2: 2}
    with pytest.raises(ValueError, match=r"outside 1\.\.4"):
        bb.resolve_layers([5])
    plain = build_backbone({"name": "tiny_clip", "layer_map": {}})
    with pytest.raises(ValueError, match=r"layer 6 is outside"):
        plain.resolve_layers([6])


def test_geometry_is_known_without_loading_the_network():
    bb = build_backbone({"name": "clip_vit_l14_336", "weights": "random"})
    assert (bb.patch_size, bb.depth, bb.width, bb.embed_dim, bb.grid_size) == (14, 24, 1024, 768, (37, 37))
    assert bb._model is None
    assert bb.random_weights
    assert bb.weights_fingerprint.startswith("random:")


def test_preprocessing_string_names_the_transform():
    cfg = default_config("clip_vit_l14_336")
    assert cfg.preprocessing().startswith("squash-bicubic-518|mean=0.48145466")


def test_network_first_loaded_inside_inference_mode_still_supports_autograd():
    import torch

    from zsad_bench.backbones import build_backbone

    bb = build_backbone({"name": "tiny_clip"})
    with torch.inference_mode():
        model = bb.model  # first access happens here
    assert not any(p.is_inference() for p in model.parameters())
    ctx = torch.zeros(1, 4, model.token_embedding.weight.shape[1], requires_grad=True)
    tokens = bb.tokenize(["a photo of a thing"])
    emb = bb.token_embeddings(tokens)
    emb = torch.cat([emb[:, :1], ctx, emb[:, 5:]], dim=1)
    out = bb.encode_token_embeddings(emb, bb.eot_index(tokens))
    out.sum().backward()
    assert ctx.grad is not None
    assert ctx.grad.abs().sum() > 0
