"""Fixtures shared by the parity tests.

Each test module names its recording ``FIXTURE`` (``fixtures/<method>.npz``); its driver is
``drivers/<method>.py`` unless the module sets ``DRIVER``, and ``REGENERATE`` may say how to
record a missing fixture. Full-size seeded CLIP weights are written once per session
(:func:`seeded_clip_file`): ViT-L-14-336 serves four methods.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent


def _driver_path(module: Any) -> Path:
    return getattr(module, "DRIVER", HERE / "drivers" / f"{Path(module.FIXTURE).stem}.py")


def load_driver(path: Path) -> Any:
    """A driver module imported from its file (drivers are not collected)."""
    spec = importlib.util.spec_from_file_location(f"{path.stem}_parity_driver", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def drv(request):
    """The test module's reference driver."""
    return load_driver(_driver_path(request.module))


@pytest.fixture(scope="session")
def seeded_clip_file(tmp_path_factory) -> Iterator[Callable[[str, int], tuple[Path, str]]]:
    """Seeded weights of a full-size open_clip CLIP, written once per session to a safetensors file.

    Yields a function of ``(model, seed)`` giving ``(path, digest)``: the weights are the APRIL-GAN
    driver's :func:`random_state_dict` (fp16-representable) for open_clip's state-dict names and
    shapes of ``model``, and ``digest`` their :func:`tensor_digest`, to be compared with the one the
    fixture was recorded with.
    """
    from safetensors.torch import save_file

    gen = load_driver(HERE / "drivers" / "april_gan.py")
    folder = tmp_path_factory.mktemp("seeded_clip")
    made: dict[tuple[str, int], tuple[Path, str]] = {}

    def make(model: str, seed: int) -> tuple[Path, str]:
        if (model, seed) not in made:
            import open_clip
            import torch

            with torch.device("meta"):
                meta = open_clip.model.CLIP(**open_clip.get_model_config(model)).state_dict()
            weights = gen.random_state_dict({k: tuple(v.shape) for k, v in meta.items()}, seed)
            path = folder / f"{model}-{seed}.safetensors"
            save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
            made[model, seed] = (path, gen.tensor_digest(weights))
        return made[model, seed]

    yield make
    shutil.rmtree(folder, ignore_errors=True)  # gigabytes: not kept among pytest's last three base folders


def preprocess_pngs(backbone: Any, images: Sequence[np.ndarray], paths: Sequence[Path]) -> Any:
    """Save (H, W, 3) uint8 images as PNG files and read them back through the evaluation loop's preprocessing.

    Returns:
        (B, 3, S, S) tensor, preprocessed as ``backbone.cfg`` says (size, mean, std, interpolation).
    """
    import torch
    from PIL import Image

    from zsad_bench.imageio import load_image
    from zsad_bench.preprocess import PreprocessSpec, preprocess_image

    c = backbone.cfg
    spec = PreprocessSpec.from_cfg(
        {"input_size": c.input_size, "mean": c.mean, "std": c.std, "interpolation": c.interpolation}
    )
    out = []
    for image, path in zip(images, paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        out.append(preprocess_image(load_image(path), spec))
    return torch.stack(out)


@pytest.fixture(scope="session")
def pngs() -> Callable[..., Any]:
    """:func:`preprocess_pngs`: the recorded images as the evaluation loop reads them."""
    return preprocess_pngs


@pytest.fixture(scope="module")
def recorded(request):
    """The arrays recorded from the official code; skipped with the recording command when missing."""
    fixture = Path(request.module.FIXTURE)
    if not fixture.is_file():
        how = getattr(
            request.module, "REGENERATE", f"record it with {_driver_path(request.module).relative_to(HERE.parents[1])}"
        )
        pytest.skip(f"{fixture} missing: {how}")
    return dict(np.load(fixture))


@pytest.fixture(scope="module")
def seeded_tiny_clip(drv, recorded, tmp_path_factory) -> Callable[..., tuple[dict, Path]]:
    """Write the driver's seeded weights of its small CLIP (``drv.MODEL``) to a safetensors file.

    Returns a function of backbone-config overrides giving ``(backbone_cfg, weights_path)``; the
    state-dict layout is checked against the one the fixture was recorded with.
    """
    import open_clip
    from safetensors.torch import save_file

    from zsad_bench.backbones import build_backbone

    folder = tmp_path_factory.mktemp(f"{drv.__name__}_weights")
    if drv.MODEL not in open_clip.list_models():
        (folder / f"{drv.MODEL}.json").write_text(json.dumps(drv.CONFIG))
        open_clip.add_model_config(folder / f"{drv.MODEL}.json")

    def make(native_size: int | None = None, **overrides: Any) -> tuple[dict, Path]:
        cfg = {"name": "clip", "arch": drv.MODEL, "input_size": drv.SIZE, "pretrained": "", **overrides}
        native = {**cfg, "weights": "random", "input_size": native_size or cfg["input_size"]}  # checkpoint shapes
        shapes = {k: tuple(v.shape) for k, v in build_backbone(native).model.state_dict().items()}
        wd = drv.winclip_driver()
        assert wd.keys_digest(shapes) == str(recorded["keys_digest"]), "open_clip state-dict layouts differ"
        path = folder / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in wd.random_state_dict(shapes, drv.SEED).items()}, str(path))
        return cfg, path

    return make
