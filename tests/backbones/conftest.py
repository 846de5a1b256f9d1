"""Tiny backbones with random weights written to checkpoint files (loaded back through weights.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / "data"


def _native_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """The state dict of ``name``'s architecture at its native size, random init with ``seed``."""
    from zsad_bench.backbones import build_backbone

    bb = build_backbone({"name": name, "weights": "random", "seed": seed})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = bb._create()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """name → (safetensors file under a weights root laid out as ``<name>.test/model.safetensors``, its tensors)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("weights")
    out = {}
    for name in ("tiny_clip", "tiny_dinov2", "tiny_sam"):
        state = _native_state(name, seed=123)
        folder = root / f"{name}.test"
        folder.mkdir()
        save_file(state, str(folder / "model.safetensors"))
        out[name] = (folder / "model.safetensors", state)
    return out


@pytest.fixture(scope="session")
def weights_root(checkpoints) -> Path:
    return next(iter(checkpoints.values()))[0].parents[1]


@pytest.fixture(scope="session")
def tiny_clip():
    from zsad_bench.backbones import build_backbone

    bb = build_backbone({"name": "tiny_clip", "weights": "random", "seed": 7})
    bb.model  # noqa: B018  (load once for the session)
    return bb


@pytest.fixture(scope="session")
def two_layer_clip():
    """A 2-block CLIP (tests/data/tiny-clip-2l.json) built through the generic ``clip`` backbone."""
    import open_clip

    from zsad_bench.backbones import build_backbone

    if "tiny-clip-2l" not in open_clip.list_models():
        open_clip.add_model_config(DATA / "tiny-clip-2l.json")
    return build_backbone({"name": "clip", "arch": "tiny-clip-2l", "weights": "random", "input_size": 96, "seed": 3})
