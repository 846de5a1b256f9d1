"""Record caoyunkang/WinClip's ``WinClipAD`` (zero-shot and 1-shot) on seeded random ViT-B-16-plus-240 weights.

The reference (caoyunkang/WinClip @ :data:`COMMIT`, MIT) is read at run time from the path given on the
command line (a checkout or a bare git directory; its files at :data:`COMMIT` are written to a temporary
folder and imported from there; nothing of it is stored in this repository). The driver runs what its
``eval_WinCLIP.py`` ``test()`` runs, with its defaults (``--scales 2 3``, ``--img-resize 240
--img-cropsize 240``, ``--backbone ViT-B-16-plus-240``, ``--use-cpu 1``) and ``--resolution 240`` (the
size of the maps it returns; its default 400 only changes the bilinear sampling of the maps that its
``max`` image score reads, and our maps are at the input size): ``WinClipAD(...)``, ``eval_mode``,
``build_text_feature_gallery(class)``, its own ``model.transform`` on PIL images, ``model(images)``
for the maps, ``build_image_feature_gallery(references)`` and ``model(images)`` again for 1-shot, and
its ``utils.metrics.metric_cal`` for the image scores (the maximum of each map). Usage::

    python tests/parity/drivers/winclip_caoyunkang.py --winclip /work/.mirror/caoyunkang+WinClip/repo \
        --out tests/parity/fixtures/winclip_caoyunkang.npz

Patches, each only to run it here:

- ``CLIPAD.create_model_and_transforms`` (called by ``WinClipAD.get_model`` with
  ``pretrained='laion400m_e32'``, a download) gets ``pretrained=<file>``: the seeded weights saved with
  ``torch.save``; the code's own ``create_model`` then loads that file through its own
  ``load_checkpoint`` (``torch.load``, ``resize_pos_embed``, a no-op at 240, strict ``load_state_dict``).
  The same values reach both sides, so this cannot change a number.
- fp16 → fp32: ``WinClipAD.__init__`` hard-codes ``self.precision = 'fp16'`` (the model cast to half,
  images ``.half()``, half score buffers; it needs CUDA, as CPU half kernels are partial). The wrapper
  above passes ``precision='fp32'`` and the driver sets ``model.precision = 'fp32'`` after construction
  (before any call that reads it), so the code's fp32 branches run. This *does* change rounding: the
  comparison is defined in fp32 on both sides, and the reference's fp16 inference is a documented
  difference (``docs/fidelity.md``), not reproduced.
- ``skimage`` (imported by ``utils/metrics.py`` for the region metrics, which ``cal_pro=False`` skips):
  a stand-in module; no recorded value passes through it.
- Recorders (wrappers that return what they wrap unchanged): ``utils.metrics.roc_curve`` (its second
  argument in the first call is the image-score vector), the instance's ``encode_image`` (window
  embeddings), ``calculate_textual_anomaly_score`` and ``calculate_visual_anomaly_score`` (the 15×15
  grids before fusion and upsampling).

Not exercised: its data loading (``CLIPDataset`` reads with ``cv2.imread`` (BGR) and resizes to 1024×1024
with ``cv2.resize``; ``test()`` then converts the few-shot references BGR→RGB but hands the test images
to PIL unconverted, i.e. with red and blue swapped: a reference quirk recorded in ``docs/fidelity.md``).
Both sides get the same RGB uint8 images here, resized by the code's own transform (PIL bicubic).

Inputs: the first two query images of the anomalib WinCLIP driver's :func:`make_images` (200×310 with a
bright 'defect', 260×180 without) and its first reference image (220×300), class words ``metal_nut``.
Weights: the shared generator of ``tests/parity/conftest.py::seeded_clip_file`` (the APRIL-GAN driver's
``random_state_dict``, fp16-representable values) for open_clip's names and shapes of
``ViT-B-16-plus-240`` with the WinCLIP driver's seed; their ``tensor_digest`` is stored. Recorded (float32):
text features, every 7th window embedding of both scales, the textual and visual 15×15 grids, the final
240×240 maps and the image scores of both modes.
"""

from __future__ import annotations

import argparse
import functools
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMMIT = "0818c9d3aa450ee7fee13be9890b84ac42f2380c"
MODEL = "ViT-B-16-plus-240"
CLASS = "metal_nut"
SIZE = 240
SCALES = (2, 3)
WINDOW_STEP = 7  # window embeddings kept in the fixture: every 7th
HERE = Path(__file__).resolve().parent


@functools.cache
def _load(name: str) -> Any:
    """A sibling driver module, imported from its file (once)."""
    path = HERE / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_parity_driver", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def winclip_driver() -> Any:
    """The anomalib WinCLIP driver (inputs and seed)."""
    return _load("winclip")


def april_gan_driver() -> Any:
    """The APRIL-GAN driver (the shared weight generator and digest)."""
    return _load("april_gan")


def seed() -> int:
    """The weight seed: the anomalib WinCLIP driver's."""
    return int(winclip_driver().SEED)


def make_inputs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """([(H, W, 3) uint8 × 2] query images, the first with a defect; [one reference image])."""
    wd = winclip_driver()
    queries = wd.make_images(wd.QUERY_SIZES[:2], wd.SEED)
    refs = wd.make_images(wd.REFERENCE_SIZES[:1], wd.SEED + 1)
    return queries, refs


def defect_masks(queries: list[np.ndarray]) -> list[np.ndarray]:
    """(SIZE, SIZE) masks for ``metric_cal``: image 0's square (resized), image 1 empty; metric path only."""
    from PIL import Image

    out = []
    for k, img in enumerate(queries):
        h, w = img.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        if k == 0:
            mask[h // 3 : h // 3 + h // 6, w // 2 : w // 2 + w // 8] = 1
        out.append(np.asarray(Image.fromarray(mask * 255).resize((SIZE, SIZE), Image.NEAREST)) // 255)
    return out


def seeded_weights() -> tuple[dict[str, torch.Tensor], str]:
    """The shared session fixture's weights for open_clip's ``MODEL`` layout, and their digest."""
    import open_clip

    gen = april_gan_driver()
    with torch.device("meta"):
        meta = open_clip.model.CLIP(**open_clip.get_model_config(MODEL)).state_dict()
    weights = gen.random_state_dict({k: tuple(v.shape) for k, v in meta.items()}, seed())
    return weights, gen.tensor_digest(weights)


# ----------------------------------------------------------------------------- the reference
def materialise(source: Path, dest: Path) -> None:
    """The code's files at :data:`COMMIT` (``git show``; a checkout or a bare git dir) into ``dest``."""
    git = ["git", f"--git-dir={source / '.git'}" if (source / ".git").exists() else f"--git-dir={source}"]
    names = subprocess.run(git + ["ls-tree", "-r", "--name-only", COMMIT], capture_output=True, text=True, check=True)
    for name in names.stdout.split():
        if name.endswith((".py", ".json", ".gz")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            blob = subprocess.run(git + ["show", f"{COMMIT}:{name}"], capture_output=True, check=True).stdout
            (dest / name).write_bytes(blob)


def _stub_skimage() -> None:
    """``skimage.measure`` is imported by ``utils/metrics.py`` for the region metrics only."""
    for name in ("skimage", "skimage.measure"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = module
    sys.modules["skimage"].measure = sys.modules["skimage.measure"]


class Recorder:
    """Wraps the reference's functions to keep what they return (unchanged)."""

    def __init__(self) -> None:
        self.windows: list[list[torch.Tensor]] = []
        self.textual: list[torch.Tensor] = []
        self.visual: list[torch.Tensor] = []
        self.image_scores: list[np.ndarray] = []

    def wrap_model(self, model: Any) -> None:
        """Record ``encode_image`` and the two grid computations of one ``WinClipAD`` instance."""
        enc, tex, vis = model.encode_image, model.calculate_textual_anomaly_score, model.calculate_visual_anomaly_score

        def encode_image(images):
            out = enc(images)
            self.windows.append([f.detach().clone() for f in out])
            return out

        def textual(features):
            out = tex(features)
            self.textual.append(out.detach().clone())
            return out

        def visual(features):
            out = vis(features)
            self.visual.append(out.detach().clone())
            return out

        model.encode_image, model.calculate_textual_anomaly_score = encode_image, textual
        model.calculate_visual_anomaly_score = visual

    def wrap_metrics(self, metrics: Any) -> None:
        """Record the image scores ``metric_cal`` hands to ``roc_curve`` (its first call per evaluation)."""
        roc = metrics.roc_curve

        def roc_curve(gt, scores, *args, **kwargs):
            if np.asarray(scores).ndim == 1 and len(scores) == len(gt) and len(gt) < 100:
                self.image_scores.append(np.asarray(scores).copy())
            return roc(gt, scores, *args, **kwargs)

        metrics.roc_curve = roc_curve


def build_reference(clipad: Any, model_cls: Any, weights_file: Path) -> Any:
    """``WinClipAD`` as ``eval_WinCLIP.main`` builds it, on our weights file, in fp32 on CPU."""
    original = clipad.create_model_and_transforms

    def create(model_name, pretrained=None, precision="fp32", **kwargs):
        assert pretrained == "laion400m_e32", pretrained  # the only tag WinClipAD accepts
        return original(model_name, pretrained=str(weights_file), precision="fp32", **kwargs)

    clipad.create_model_and_transforms = create
    try:
        model = model_cls(
            out_size_h=SIZE,
            out_size_w=SIZE,
            device="cpu",
            backbone=MODEL,
            pretrained_dataset="laion400m_e32",
            scales=SCALES,
            img_resize=SIZE,
            img_cropsize=SIZE,
        )
    finally:
        clipad.create_model_and_transforms = original
    model.precision = "fp32"  # hard-coded 'fp16' in __init__ (see the module docstring)
    return model.to("cpu")


def record(source: Path) -> dict[str, np.ndarray]:
    """Run the reference zero-shot and 1-shot; collect outputs and intermediates."""
    from PIL import Image

    torch.manual_seed(0)
    queries, refs = make_inputs()
    weights, digest = seeded_weights()
    with tempfile.TemporaryDirectory() as tmp:
        materialise(source, Path(tmp))
        weights_file = Path(tmp) / "seeded.pt"
        torch.save(weights, weights_file)
        sys.path.insert(0, tmp)
        _stub_skimage()
        import WinCLIP
        from utils import metrics

        rec = Recorder()
        rec.wrap_metrics(metrics)
        model = build_reference(WinCLIP.model.CLIPAD, WinCLIP.WinClipAD, weights_file)
        keys = sorted(model.model.state_dict())
        assert keys == sorted(weights), "CLIPAD's state-dict names differ from open_clip's"
        rec.wrap_model(model)
        model.eval_mode()
        model.build_text_feature_gallery(CLASS)
        gt, masks = [1, 0], defect_masks(queries)
        q = torch.stack([model.transform(Image.fromarray(img)) for img in queries])  # (2, 3, 240, 240)
        r = torch.stack([model.transform(Image.fromarray(img)) for img in refs])  # (1, 3, 240, 240)
        zero = model(q)
        metrics.metric_cal(np.array(zero), gt, masks, cal_pro=False)
        model.build_image_feature_gallery(r)
        few = model(q)
        metrics.metric_cal(np.array(few), gt, masks, cal_pro=False)
    return _collect(model, rec, zero, few, q, r, keys, digest)


def _collect(model, rec: Recorder, zero, few, q, r, keys, digest) -> dict[str, np.ndarray]:
    f32 = lambda t: np.asarray(t.detach().float().numpy() if torch.is_tensor(t) else t, dtype=np.float32)  # noqa: E731
    begin = model.scale_begin_indx  # [0, 196]
    windows = rec.windows[0]  # encode_image calls: queries (zero-shot), reference, queries (1-shot)
    w2 = torch.stack(windows[begin[0] : begin[1]], dim=1)  # (2, 196, 640)
    w3 = torch.stack(windows[begin[1] :], dim=1)  # (2, 169, 640)
    assert len(rec.image_scores) == 2, len(rec.image_scores)  # one metric_cal per mode
    assert (len(rec.textual), len(rec.visual)) == (2, 1)
    return {
        "commit": np.array(COMMIT),
        "keys": np.array(keys),
        "weights_digest": np.array(digest),
        "input_sum": np.array([q.double().sum().item(), r.double().sum().item()]),
        "text_features": f32(model.text_features),  # (2, 640) [normal, anomalous], normalised
        "windows2": f32(w2[:, ::WINDOW_STEP]),
        "windows3": f32(w3[:, ::WINDOW_STEP]),
        "zero/textual_grid": f32(rec.textual[0][:, 0]),  # (2, 15, 15)
        "zero/maps": f32(np.stack(zero)),  # (2, 240, 240)
        "zero/scores": f32(rec.image_scores[0]),
        "few/textual_grid": f32(rec.textual[1][:, 0]),
        "few/visual_grid": f32(rec.visual[0][:, 0]),
        "few/maps": f32(np.stack(few)),
        "few/scores": f32(rec.image_scores[1]),
        "meta": np.array(
            json.dumps({"reference": f"caoyunkang/WinClip@{COMMIT}", "torch": torch.__version__, "seed": seed()})
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--winclip", type=Path, required=True, help="checkout or bare git dir of caoyunkang/WinClip")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "fixtures" / "winclip_caoyunkang.npz"
    )
    args = parser.parse_args()
    out = record(args.winclip)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}: " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in out.items()))
    print("zero-shot scores", out["zero/scores"], "1-shot scores", out["few/scores"])


if __name__ == "__main__":
    main()
