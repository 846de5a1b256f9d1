"""Record gaobb/AdaptCLIP's own ``test.py`` (zero-shot and 1-shot) on seeded random weights.

The reference (GPL-2.0: run only, nothing of it is stored here) runs unchanged as ``__main__`` with its
own argument parser and seed (10), from a copy outside this repository, twice: ``--k_shots 0`` and
``--k_shots 1`` with ``--visual_learner --textual_learner --pq_learner --pq_context`` (the released
scripts' switches). Its adapters load a checkpoint in its own format (``{"textual_learner": ...,
"visual_learner": ..., "pq_learner": ...}``) whose tensors are seeded here (:func:`adapter_checkpoint`),
BatchNorm running statistics included so that eval-mode normalisation matters.

Recorded: the preprocessed query and prompt pixels the CLIP encoder received, the visual and textual
adapters' image logits and maps, the prompt-query adapter's per-layer logits, maps and align maps, and
the fused maps and image scores ``test.py`` hands to its evaluator (the run stops there).

The architecture (:data:`CONFIG`) is a 24-block CLIP ViT (``test.py`` hard-codes ``DPAM_layer=20`` and
768-d adapters, so the joint embedding is 768) with widths 64 (1 head), patch 14, trained size 56 run
at 70 px (5×5 patches; the positional embedding is resized 4×4 → 5×5 bilinearly at the first forward),
weights of the WinCLIP driver's :func:`random_state_dict`. Patched only for a CPU with today's
packages: ``pkg_resources``, ``tabulate``, ``cv2``, ``skimage``, ``numba`` and its
``metrics`` package (torchmetrics) are stand-ins (unused numerically); ``adaptcliplib.load`` gets the
weights in place of its download and ``torch.jit.load``; ``Tensor.cuda`` returns the tensor
(``prepare_static_text_feature``); float64 masks of good images are cast to uint8 for Pillow >= 11;
the evaluator is replaced by a recorder; the test loader runs without worker processes.

Usage::

    git clone https://github.com/gaobb/AdaptCLIP /tmp/AdaptCLIP && git -C /tmp/AdaptCLIP checkout 354d9e33
    python tests/parity/drivers/adaptclip.py --adaptclip /tmp/AdaptCLIP --out tests/parity/fixtures/adaptclip.npz
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import runpy
import sys
import tempfile
import types
import zlib
from pathlib import Path

import numpy as np
import torch

COMMIT = "354d9e3332ec5348b3d8e4439111d34f8e94c0a9"
MODEL = "ViT-adaptclip-parity"
CONFIG = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 56, "layers": 24, "width": 64, "head_width": 64, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 12},
}
SIZE = 70  # 5×5 patches
SEED = 20241219  # CLIP weights
ADAPTER_SEED = 11
CLASSES = ("carpet", "bottle")
QUERY_SIZES = [(70, 96), (88, 70), (64, 90), (90, 76)]  # (H, W): non-square
PROMPT_SIZES = [(80, 100), (96, 72)]
HERE = Path(__file__).resolve().parent


def winclip_driver():
    """The WinCLIP driver module (its seeded-weights and image helpers are shared)."""
    spec = importlib.util.spec_from_file_location("winclip_parity_driver", HERE / "winclip.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_inputs() -> tuple[list[tuple[str, str, np.ndarray, np.ndarray | None]], list[tuple[str, np.ndarray]]]:
    """Test items (category, defect, image, mask or None) and one normal prompt image per category."""
    images = winclip_driver().make_images(QUERY_SIZES + PROMPT_SIZES, SEED)
    tests = []
    for i, (h, w) in enumerate(QUERY_SIZES):
        category = CLASSES[i // 2]
        if i % 2 == 0:
            tests.append((category, "good", images[i], None))
            continue
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 3 : 2 * w // 3] = 255
        img = images[i].copy()
        img[mask > 0] = [240, 240, 40] if i == 1 else [30, 200, 220]
        tests.append((category, "defect", img, mask))
    return tests, [(CLASSES[j], images[len(QUERY_SIZES) + j]) for j in range(len(CLASSES))]


def write_dataset(root: Path) -> None:
    """An MVTec-layout folder with the ``meta.json`` the reference's datasets read."""
    from PIL import Image

    tests, prompts = make_inputs()
    meta: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for i, (category, defect, image, mask) in enumerate(tests):
        rel = f"{category}/test/{defect}/{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / rel)
        mask_rel = ""
        if mask is not None:
            mask_rel = f"{category}/ground_truth/{defect}/{i:03d}_mask.png"
            (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / mask_rel)
        item = {"img_path": rel, "mask_path": mask_rel, "cls_name": category, "specie_name": defect}
        meta["test"].setdefault(category, []).append({**item, "anomaly": int(mask is not None)})
    for j, (category, image) in enumerate(prompts):
        rel = f"{category}/train/good/{j:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / rel)
        item = {"img_path": rel, "mask_path": "", "cls_name": category, "specie_name": "good", "anomaly": 0}
        meta["train"].setdefault(category, []).append(item)
    (root / "meta.json").write_text(json.dumps(meta, indent=4))


def _value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A seeded value for one learnable tensor or BatchNorm statistic, from its official name alone."""
    g = torch.Generator().manual_seed(ADAPTER_SEED + zlib.crc32(name.encode()))
    if name.endswith("running_var"):
        return torch.rand(shape, generator=g) + 0.5
    x = torch.randn(shape, generator=g)
    if name.endswith(("ctx_pos", "ctx_neg")) or name.endswith(("running_mean", "bias")):
        return x * 0.1
    if len(shape) == 1:  # BatchNorm weight
        return 1.0 + 0.1 * x
    return x / max(1, int(np.prod(shape[1:]))) ** 0.5


def adapter_state(layout: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """``{official key: value}`` for the layout's keys (names and shapes of the reference's checkpoint)."""
    return {name: _value(name, tuple(shape)) for name, shape in layout.items()}


def _randomized(name: str, t: torch.Tensor) -> bool:
    return t.is_floating_point() and not name.split(".", 1)[1].startswith(("token_", "tokenized_"))


class _Stop(Exception):
    """Ends a test run at its evaluator."""


class Recorder:
    """Observes the reference while it runs; patches only what a CPU with today's packages needs."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        self.weights = weights
        self.encoded: list[torch.Tensor] = []
        self.out: dict[str, list[torch.Tensor]] = {}
        self.results: dict | None = None

    def add(self, key: str, value: torch.Tensor) -> None:
        self.out.setdefault(key, []).append(value.detach().clone().float())

    def install(self, root: Path) -> None:
        import packaging.version
        import PIL.Image

        for name in ("cv2", "skimage", "tabulate", "numba"):  # imported, unused numerically
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["skimage"].measure = None
        sys.modules["numba"].jit = lambda *a, **k: lambda f: f
        sys.modules["tabulate"].tabulate = lambda *a, **k: ""
        sys.modules.setdefault("pkg_resources", types.SimpleNamespace(packaging=packaging))
        metrics = types.ModuleType("metrics")  # its metrics (torchmetrics) are replaced by the recorder
        for name in ("AUPR", "AUPRO", "AUROC", "F1Max", "OverkillEscape"):
            setattr(metrics, name, None)
        sys.modules["metrics"] = metrics
        sys.path.insert(0, str(root))
        fromarray = PIL.Image.fromarray

        def fromarray_u8(obj, mode=None):  # Pillow >= 11 refuses float64 'L' arrays (good-image masks)
            if mode == "L" and isinstance(obj, np.ndarray) and obj.dtype == np.float64:
                obj = obj.astype(np.uint8)
            return fromarray(obj, mode) if mode else fromarray(obj)

        PIL.Image.fromarray = fromarray_u8
        torch.Tensor.cuda = lambda self, *a, **k: self  # prepare_static_text_feature: tokens.cuda()
        self._weights_loader()
        self._observers()

    def _weights_loader(self) -> None:
        import adaptcliplib.model_load as model_load

        weights = self.weights

        class Archive:  # what torch.jit.load returns: .eval() and .state_dict()
            def eval(self):
                return self

            def state_dict(self):
                return {k: v.clone() for k, v in weights.items()}

        model_load._download = lambda url, root=None: __file__  # any existing file: opened, not read
        torch.jit.load = lambda *a, **k: Archive()

    def _observers(self) -> None:
        import adaptcliplib.adaptclip as lib
        import tools

        rec = self
        encode = lib.AdaptCLIP.encode_image

        def encode_recorded(model, image, *a, **k):
            rec.encoded.append(image.detach().clone())
            return encode(model, image, *a, **k)

        lib.AdaptCLIP.encode_image = encode_recorded
        va, ta, pq = lib.VisualAdapter.forward, lib.TextualAdapter.compute_global_local_score, lib.PQAdapter.forward

        def va_recorded(module, *a, **k):
            logits, maps = va(module, *a, **k)
            rec.add("va_logits", logits), rec.add("va_maps", maps[:, 1])
            return logits, maps

        def ta_recorded(module, *a, **k):
            logits, maps = ta(module, *a, **k)
            rec.add("ta_logits", logits), rec.add("ta_maps", maps[:, 1])
            return logits, maps

        def pq_recorded(module, *a, **k):
            logits, maps, aligns = pq(module, *a, **k)
            rec.add("pq_logits", torch.stack(logits, 1))  # (B, layers, 2)
            rec.add("pq_maps", torch.stack([m[:, 1] for m in maps], 1))  # (B, layers, S, S)
            rec.add("pq_align", torch.stack([m[:, 0] for m in aligns], 1))
            return logits, maps, aligns

        lib.VisualAdapter.forward, lib.TextualAdapter.compute_global_local_score = va_recorded, ta_recorded
        lib.PQAdapter.forward = pq_recorded

        class Evaluator:
            def __init__(self, *a, **k) -> None:
                pass

            def run(self, results, cls_name, logger):
                rec.results = {"maps": results["pr_masks"].clone(), "scores": results["pr_anomalys"].clone()}
                raise _Stop

        tools.Evaluator = Evaluator
        loader = torch.utils.data.DataLoader.__init__

        def loader_in_process(self, *a, **k):  # no worker processes: the observers stay in this one
            k["num_workers"] = 0
            loader(self, *a, **k)

        torch.utils.data.DataLoader.__init__ = loader_in_process


def adapter_checkpoint(model, path: Path) -> dict[str, list[int]]:
    """Adapters built by the reference's own classes, seeded values, saved in its checkpoint format.

    Returns the layout (official key -> shape) of the seeded tensors; the text placeholders' buffers
    stay the reference's own.
    """
    from adaptcliplib import PQAdapter, TextualAdapter, VisualAdapter

    learners = {
        "textual_learner": TextualAdapter(model, SIZE, 12),
        "visual_learner": VisualAdapter(SIZE, 14, input_dim=768, reduction=4),
        "pq_learner": PQAdapter(SIZE, 14, context=True, input_dim=768, mid_dim=128, layers_num=4),
    }
    ckpt = {k: dict(v.state_dict()) for k, v in learners.items()}
    layout = {f"{k}.{n}": list(t.shape) for k, s in ckpt.items() for n, t in s.items() if _randomized(f"{k}.{n}", t)}
    for key, value in adapter_state(layout).items():
        group, name = key.split(".", 1)
        ckpt[group][name] = value
    torch.save(ckpt, path)
    return layout


def run_main(root: Path, argv: list[str]) -> None:
    """Run ``test.py`` of the reference as ``__main__`` with ``argv``."""
    old_argv, old_cwd = sys.argv, Path.cwd()
    sys.argv = ["test.py", *argv]
    os.chdir(root)
    try:
        runpy.run_path(str(root / "test.py"), run_name="__main__")
    except _Stop:
        pass
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)


def record(root: Path) -> dict[str, np.ndarray]:
    """Both runs; returns the fixture arrays."""
    import open_clip

    drv = winclip_driver()
    out: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / f"{MODEL}.json").write_text(json.dumps(CONFIG))
        open_clip.add_model_config(work / f"{MODEL}.json")
        shapes = drv.shapes_of(open_clip.create_model(MODEL, force_quick_gelu=True).state_dict())
        rec = Recorder(drv.random_state_dict(shapes, SEED))
        rec.install(root)
        write_dataset(work / "mvtec")
        import adaptcliplib

        model, _ = adaptcliplib.load("ViT-L/14@336px", device="cpu")
        layout = adapter_checkpoint(model, work / "adapters.pth")
        for shots in (0, 1):
            rec.encoded, rec.out, rec.results = [], {}, None
            argv = ["--test_data_path", str(work / "mvtec"), "--save_path", str(work / f"run{shots}"),
                    "--checkpoint_path", str(work / "adapters.pth"), "--dataset", "mvtec", "--image_size", str(SIZE),
                    "--k_shots", str(shots), "--batch_size", "8", "--visual_learner", "--textual_learner",
                    "--pq_learner", "--pq_context"]  # fmt: skip
            run_main(root, argv)
            pre = f"shot{shots}."
            images = torch.cat(rec.encoded)
            if shots:
                out["prompt_inputs"] = images[: len(CLASSES)].numpy()
            out["test_inputs"] = images[-len(QUERY_SIZES) :].numpy()
            out.update({pre + k: torch.cat(v).numpy() for k, v in rec.out.items()})
            out[pre + "maps"] = rec.results["maps"].float().numpy()
            out[pre + "scores"] = rec.results["scores"].float().numpy()
    out["adapter_layout"] = np.array(json.dumps(layout))
    out["test_categories"] = np.array([c for c, *_ in make_inputs()[0]])
    out["keys_digest"] = np.array(drv.keys_digest(shapes))
    meta = {"reference": f"gaobb/AdaptCLIP@{COMMIT} test.py", "model": MODEL, "config": CONFIG}
    out["meta"] = np.array(json.dumps({**meta, "weights_seed": SEED, "torch": torch.__version__}))
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="record the AdaptCLIP parity fixture from gaobb/AdaptCLIP")
    parser.add_argument("--adaptclip", type=Path, required=True, help="a copy of gaobb/AdaptCLIP at COMMIT")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/fixtures/adaptclip.npz"))
    args = parser.parse_args()
    out_path = args.out.absolute()
    out = record(args.adaptclip.absolute())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **out)
    print(f"wrote {out_path}: " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in out.items()))


if __name__ == "__main__":
    main()
