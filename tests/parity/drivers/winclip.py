"""Record anomalib's ``WinClipModel`` on seeded random ViT-B-16-plus-240 weights (the WinCLIP parity fixture).

anomalib's model assumes open_clip ≤ 2.24 (sequence-first transformer, spec §1.1), so it is run
with ``open_clip_torch==2.24.0`` put in front of the project's environment; nothing of anomalib is
stored in this repository: its three WinCLIP files are read from a fetched copy at run time and
the two small anomalib helpers they import (``InferenceBatch``, the buffer mixins) are replaced
by stand-ins written here. Usage::

    pip install --no-deps --target /tmp/oc224 open_clip_torch==2.24.0
    git clone https://github.com/open-edge-platform/anomalib /tmp/anomalib   # any copy at the commit below
    PYTHONPATH=/tmp/oc224 python tests/parity/drivers/winclip.py --anomalib /tmp/anomalib \
        --out tests/parity/fixtures/winclip.npz

``--anomalib`` may also be a bare git directory (read with ``git show <commit>:<path>``).
The functions :func:`make_images`, :func:`preprocess` and :func:`random_state_dict` are imported
by ``tests/parity/test_winclip.py`` so that both sides see the same pixels and weights; they
need only numpy and torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

ANOMALIB_COMMIT = "b7233686172e3485bfbe01272a8cd7a7e4576986"
WINCLIP_DIR = "src/anomalib/models/image/winclip"
CLASS_NAME = "metal_nut"
SEED = 20240607
QUERY_SIZES = [(200, 310), (260, 180), (240, 333)]  # (H, W): non-square, resized to 240×240
REFERENCE_SIZES = [(220, 300), (250, 250)]
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
WINDOW_STEP = 7  # windows of image 0 kept in the fixture: every 7th


# ----------------------------------------------------------------------------- shared inputs
def make_images(sizes: Iterable[tuple[int, int]], seed: int) -> list[np.ndarray]:
    """Smooth random uint8 RGB images (H, W, 3), one with a bright square 'defect'."""
    rng = np.random.default_rng(seed)
    out = []
    for k, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.zeros((h, w, 3))
        for c in range(3):
            fx, fy, phase = rng.uniform(2, 9), rng.uniform(2, 9), rng.uniform(0, 6.3)
            img[..., c] = 0.5 + 0.3 * np.sin(fx * xx * 6.3 + phase) * np.cos(fy * yy * 6.3)
        img += rng.normal(0, 0.05, size=img.shape)
        if k == 0:
            img[h // 3 : h // 3 + h // 6, w // 2 : w // 2 + w // 8] = [0.95, 0.2, 0.1]
        out.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return out


def preprocess(images: list[np.ndarray]) -> torch.Tensor:
    """anomalib's WinCLIP pre-processor: float [0, 1] → Resize((240, 240), bicubic, antialias) → Normalize."""
    from torchvision.transforms import v2

    transform = v2.Compose(
        [v2.Resize((240, 240), antialias=True, interpolation=v2.InterpolationMode.BICUBIC), v2.Normalize(MEAN, STD)]
    )
    tensors = [torch.from_numpy(img).permute(2, 0, 1).float() / 255.0 for img in images]
    return torch.stack([transform(t) for t in tensors])  # (B, 3, 240, 240)


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded weights for an open_clip CLIP's state-dict names and shapes (scales keep features lively)."""
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        g = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
        noise = torch.randn(shape, generator=g)
        parts = name.split(".")
        leaf, owner = parts[-1], (parts[-2] if len(parts) > 1 else "")
        if name == "logit_scale":
            out[name] = torch.tensor(float(np.log(1 / 0.07)))
        elif owner.startswith("ln") and leaf == "weight":
            out[name] = 1.0 + 0.1 * noise  # LayerNorm gains
        elif leaf in ("bias", "in_proj_bias"):
            out[name] = 0.02 * noise
        elif len(shape) >= 2 and name not in ("positional_embedding", "visual.positional_embedding"):
            fan_in = shape[0] if name.endswith("proj") or name.endswith("projection") else int(np.prod(shape[1:]))
            out[name] = noise / fan_in**0.5
        else:  # embeddings and class token
            out[name] = 0.1 * noise
    return out


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Name → shape."""
    return {k: tuple(v.shape) for k, v in state.items()}


def keys_digest(shapes: dict[str, tuple[int, ...]]) -> str:
    """A digest of the names and shapes (both open_clip versions must agree)."""
    import hashlib

    text = "\n".join(f"{k}:{shapes[k]}" for k in sorted(shapes))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the reference
_STUB_DATA = """
from typing import NamedTuple
import torch

class InferenceBatch(NamedTuple):
    pred_score: torch.Tensor | None = None
    pred_label: torch.Tensor | None = None
    anomaly_map: torch.Tensor | None = None
    pred_mask: torch.Tensor | None = None
"""
_STUB_COMPONENTS = '''
from torch import nn

class DynamicBufferMixin(nn.Module):
    """Stand-in: only matters for load_state_dict, which the driver does not use."""

class BufferListMixin(nn.Module):
    """Stand-in: a list of tensors kept as a plain attribute."""

    def register_buffer_list(self, name, values, persistent=True, **kwargs):
        object.__setattr__(self, name, list(values))
'''


def read_anomalib_file(root: Path, rel: str) -> str:
    """A file of the anomalib copy: a work tree or a bare git directory (at ANOMALIB_COMMIT)."""
    if (root / rel).is_file():
        return (root / rel).read_text()
    return subprocess.run(
        ["git", "--git-dir", str(root), "show", f"{ANOMALIB_COMMIT}:{rel}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def import_reference(root: Path, tmp: Path):
    """Build a minimal ``anomalib`` package in ``tmp`` around the three WinCLIP files and import it."""
    pkg = tmp / "anomalib"
    for sub in ("", "data", "models", "models/components", "models/image", "models/image/winclip"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text(_STUB_DATA)
    (pkg / "models" / "components" / "__init__.py").write_text(_STUB_COMPONENTS)
    for name in ("torch_model.py", "utils.py", "prompting.py"):
        (pkg / "models/image/winclip" / name).write_text(read_anomalib_file(root, f"{WINCLIP_DIR}/{name}"))
    sys.path.insert(0, str(tmp))
    from anomalib.models.image.winclip import torch_model

    return torch_model


def patch_weights(open_clip) -> dict[str, torch.Tensor]:
    """Make ``create_model_and_transforms`` build without downloading and load seeded weights."""
    original = open_clip.create_model_and_transforms
    holder: dict[str, torch.Tensor] = {}

    def create(name, pretrained=None, **kw):
        model, t_train, t_val = original(name, pretrained=None, **kw)
        weights = random_state_dict(shapes_of(model.state_dict()))
        model.load_state_dict(weights)
        holder.update(weights)
        return model, t_train, t_val

    open_clip.create_model_and_transforms = create
    return holder


def record(anomalib_root: Path) -> dict[str, np.ndarray]:
    """Run anomalib's WinClipModel zero- and few-shot and collect outputs and intermediates."""
    import open_clip
    from open_clip.version import __version__ as oc_version

    if not oc_version.startswith("2.24"):
        raise SystemExit(f"run with open_clip_torch==2.24.0 in front (found {oc_version}); see the module docstring")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tm = import_reference(anomalib_root, Path(tmp))
        weights = patch_weights(open_clip)
        model = tm.WinClipModel(class_name=CLASS_NAME).eval()
        queries = preprocess(make_images(QUERY_SIZES, SEED))
        refs = preprocess(make_images(REFERENCE_SIZES, SEED + 1))
        with torch.no_grad():
            out = _zero_and_few_shot(model, tm, queries, refs)
    out["keys_digest"] = np.array(keys_digest(shapes_of(weights)))
    out["input_sum"] = np.array([queries.double().sum().item(), refs.double().sum().item()])
    out["meta"] = np.array(
        json.dumps(
            {
                "reference": f"open-edge-platform/anomalib@{ANOMALIB_COMMIT} {WINCLIP_DIR}",
                "open_clip": oc_version,
                "torch": torch.__version__,
                "seed": SEED,
                "class_name": CLASS_NAME,
                "window_step": WINDOW_STEP,
            }
        )
    )
    return out


def _zero_and_few_shot(model, tm, queries: torch.Tensor, refs: torch.Tensor) -> dict[str, np.ndarray]:
    text = model.text_embeddings  # (2, 640), raw means
    image_emb, window_emb, patch_emb = model.encode_image(queries)
    image_scores = tm.class_scores(image_emb, text, model.temperature, target_class=1)
    zero_grid = model._compute_zero_shot_scores(image_scores, window_emb)
    zero = model(queries)
    model.setup(reference_images=refs)
    few_grid = model._compute_few_shot_scores(patch_emb, window_emb)
    few = model(queries)
    f32 = lambda t: t.detach().float().numpy().astype(np.float32)  # noqa: E731
    return {
        "text_embeddings": f32(text),
        "image_embeddings": f32(image_emb),
        "windows2_image0": f32(window_emb[0][0, ::WINDOW_STEP]),
        "windows3_image0": f32(window_emb[1][0, ::WINDOW_STEP]),
        "patch_embeddings_image0": f32(patch_emb[0, ::WINDOW_STEP]),
        "zero_image_scores": f32(zero.pred_score),
        "zero_grid": f32(zero_grid),
        "zero_map_image0": f32(zero.anomaly_map[0]),
        "few_grid": f32(few_grid),
        "few_image_scores": f32(few.pred_score),
        "few_map_image0": f32(few.anomaly_map[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="record the WinCLIP parity fixture from anomalib")
    parser.add_argument("--anomalib", type=Path, required=True, help="anomalib work tree or bare git directory")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/fixtures/winclip.npz"))
    args = parser.parse_args()
    out = record(args.anomalib)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}: " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in out.items()))


if __name__ == "__main__":
    main()
