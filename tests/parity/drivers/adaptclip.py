"""Record gaobb/AdaptCLIP's own ``test.py`` (zero-shot and 1-shot) on seeded random weights.

The reference (GPL-2.0: run only, nothing of it is stored here) runs unchanged as ``__main__`` with its
own argument parser and seed (10), from a copy outside this repository at :data:`COMMIT`, twice per
architecture: ``--k_shots 0`` and ``--k_shots 1`` with ``--visual_learner --textual_learner --pq_learner
--pq_context`` (the released ``scripts/test_adaptclip.sh`` switches; ``--image_size`` as below). Its
adapters load a checkpoint in its own format (``{"textual_learner": ..., "visual_learner": ...,
"pq_learner": ...}``) whose tensors are seeded here (:func:`adapter_checkpoint`), BatchNorm running
statistics included so that eval-mode normalisation matters; the reference loads it through its own
``--checkpoint_path``.

Architectures (:data:`ARCHS`, fixture keys prefixed ``<arch>/``):

- ``full``: the real ``ViT-L/14@336px`` (open_clip's ``ViT-L-14-336`` names and shapes) run at 518 as
  the released scripts do; the reference's ``VisionTransformer.forward`` resizes the positional
  embedding 24×24 → 37×37 bilinearly (no antialias) at the first forward, QuickGELU as it builds the
  model. Weights: the APRIL-GAN driver's ``random_state_dict`` with its ``SEED`` (fp16-representable;
  the same file the parity suite shares between four methods), their ``tensor_digest`` stored. The
  768-d adapters have their real shapes. Inputs: one class (``bottle``), two non-square test images
  (one good, one with a painted defect) and one normal prompt image (the APRIL-GAN driver's
  ``make_inputs`` at :data:`FULL_HW`). Maps are stored every :data:`SUB`-th pixel (branch maps,
  bilinear upsamplings of the 37×37 grid) or every :data:`SUB_FUSED`-th pixel (fused maps), plus the
  1-shot fused map of the defective image in full; encoder inputs every :data:`SUB_INPUT`-th pixel.
- ``reduced``: a 24-block CLIP ViT (``test.py`` hard-codes ``DPAM_layer=20`` and 768-d adapters, so the
  joint embedding is 768) with widths 64 (1 head), patch 14, trained size 56 run at 70 (positional
  embedding 4×4 → 5×5), the WinCLIP driver's ``random_state_dict``; two classes, four test images,
  one prompt image per class; everything stored in full (a cheap check of other shapes and paths).

Recorded: the preprocessed query and prompt pixels the CLIP encoder received, the visual and textual
adapters' image logits and maps, the prompt-query adapter's per-layer logits, maps and align maps, and
the fused maps and image scores ``test.py`` hands to its evaluator (the run stops there).

Patches, none of which can change a number (only to run it on a CPU with today's packages):

- ``pkg_resources``, ``tabulate``, ``cv2``, ``skimage``, ``numba`` and the reference's ``metrics``
  package (torchmetrics): stand-ins; imported, used only for metrics, logs and figures;
- ``adaptcliplib.load``: its ``_download`` returns an existing file and ``torch.jit.load`` returns an
  object whose ``state_dict()`` is our seeded weights, so its own ``build_model`` builds and loads the
  model from them exactly as from OpenAI's archive (whose tensors it reads the same way);
- ``Tensor.cuda`` is the identity (``prepare_static_text_feature`` moves tokens to CUDA; a CPU has none);
- ``PIL.Image.fromarray(<float64>, mode='L')`` (the all-zero masks of good images, metric path only) is
  refused by Pillow >= 11: cast to uint8 (zeros either way);
- the test loader runs without worker processes (``num_workers=0``: same items, same order), so that
  the recorders see the calls; the evaluator is replaced by a recorder that ends the run.

Usage (a copy of the reference at :data:`COMMIT`; ``--arch`` repeatable, default both)::

    git clone https://github.com/gaobb/AdaptCLIP /tmp/AdaptCLIP && git -C /tmp/AdaptCLIP checkout 354d9e33
    python tests/parity/drivers/adaptclip.py --adaptclip /tmp/AdaptCLIP --arch full --arch reduced

The fixture defaults to ``tests/parity/fixtures/adaptclip.npz``; the other architecture's entries are
kept. ``--arch full`` took 11 minutes on 2 heavily loaded cores and 5.4 GB of memory (the reference's
text encoder runs its 231 static sentences at full length in both runs); ``--arch reduced`` 30 s.
:func:`make_inputs`, :func:`clip_shapes`, :func:`clip_weights`, :func:`adapter_state`,
:func:`sub_step` and :data:`ARCHS` are imported by ``tests/parity/test_adaptclip.py``.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

COMMIT = "354d9e3332ec5348b3d8e4439111d34f8e94c0a9"
HERE = Path(__file__).resolve().parent
ADAPTER_SEED = 11
SUB = 7  # full size: branch maps (bilinear upsamplings of the 37×37 grid) every 7th pixel
SUB_FUSED = 4  # full size: fused maps every 4th pixel (+ the 1-shot map of the defective image in full)
SUB_INPUT = 8  # full size: encoder inputs every 8th pixel
FULL_HW = (320, 430)  # (H, W) of the full-size inputs
FULL_CLASS = "bottle"

# the reduced architecture
MODEL = "ViT-adaptclip-parity"
CONFIG = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 56, "layers": 24, "width": 64, "head_width": 64, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 12},
}
SIZE = 70  # 5×5 patches
SEED = 20241219  # reduced CLIP weights
CLASSES = ("carpet", "bottle")
QUERY_SIZES = [(70, 96), (88, 70), (64, 90), (90, 76)]  # (H, W): non-square
PROMPT_SIZES = [(80, 100), (96, 72)]


def _load(name: str) -> types.ModuleType:
    """A sibling driver module, imported from its file (drivers are not a package)."""
    key = f"{name}_parity_driver"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def winclip_driver() -> types.ModuleType:
    """The WinCLIP driver module (the reduced architecture's weights and images)."""
    return _load("winclip")


def april_gan_driver() -> types.ModuleType:
    """The APRIL-GAN driver module (the shared full-size weights, their digest, the full-size images)."""
    return _load("april_gan")


@dataclass(frozen=True)
class Arch:
    """One recorded configuration."""

    model: str  # open_clip model name (names and shapes of the seeded state dict)
    size: int  # --image_size
    seed: int  # CLIP weights
    config: dict = field(default_factory=dict)  # {} = open_clip's own config of `model`

    @property
    def full(self) -> bool:
        """Maps stored subsampled (see the module docstring)."""
        return not self.config


ARCHS = {
    "full": Arch("ViT-L-14-336", 518, april_gan_driver().SEED),
    "reduced": Arch(MODEL, SIZE, SEED, CONFIG),
}

Item = tuple[str, str, np.ndarray, "np.ndarray | None"]  # (category, defect, (H, W, 3) uint8, (H, W) mask)


def make_inputs(key: str = "reduced") -> tuple[list[Item], list[tuple[str, np.ndarray]]]:
    """Test items (category, defect, image, mask or None) and one normal prompt image per category."""
    if ARCHS[key].full:
        tests, ref = april_gan_driver().make_inputs(FULL_HW, ARCHS[key].seed)
        items = [(FULL_CLASS, defect, img, mask) for defect, img, mask in tests[:2]]  # good, scratch
        return items, [(FULL_CLASS, ref)]
    images = winclip_driver().make_images(QUERY_SIZES + PROMPT_SIZES, SEED)
    items = []
    for i, (h, w) in enumerate(QUERY_SIZES):
        category = CLASSES[i // 2]
        if i % 2 == 0:
            items.append((category, "good", images[i], None))
            continue
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 3 : 2 * w // 3] = 255
        img = images[i].copy()
        img[mask > 0] = [240, 240, 40] if i == 1 else [30, 200, 220]
        items.append((category, "defect", img, mask))
    return items, [(CLASSES[j], images[len(QUERY_SIZES) + j]) for j in range(len(CLASSES))]


def write_dataset(root: Path, key: str) -> None:
    """An MVTec-layout folder with the ``meta.json`` the reference's datasets read."""
    tests, prompts = make_inputs(key)
    april_gan_driver().write_meta_dataset(root, tests, prompts)


def clip_shapes(key: str) -> dict[str, tuple[int, ...]]:
    """open_clip's state-dict names and shapes of the architecture (its model config registered if new)."""
    import open_clip

    arch = ARCHS[key]
    if arch.config and arch.model not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="adaptclip_parity_"))
        (folder / f"{arch.model}.json").write_text(json.dumps(arch.config))
        open_clip.add_model_config(folder / f"{arch.model}.json")
    with torch.device("meta"):
        state = open_clip.model.CLIP(**open_clip.get_model_config(arch.model)).state_dict()
    return {k: tuple(v.shape) for k, v in state.items()}


def clip_weights(key: str) -> dict[str, torch.Tensor]:
    """The seeded CLIP weights of the architecture (full: exactly the parity suite's shared file)."""
    gen = april_gan_driver() if ARCHS[key].full else winclip_driver()
    return gen.random_state_dict(clip_shapes(key), ARCHS[key].seed)


# ----------------------------------------------------------------------------- seeded adapters
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


def adapter_checkpoint(model, size: int, path: Path) -> dict[str, list[int]]:
    """Adapters built by the reference's own classes, seeded values, saved in its checkpoint format.

    Returns the layout (official key -> shape) of the seeded tensors; the text placeholders' buffers
    stay the reference's own.
    """
    from adaptcliplib import PQAdapter, TextualAdapter, VisualAdapter

    learners = {
        "textual_learner": TextualAdapter(model, size, 12),
        "visual_learner": VisualAdapter(size, 14, input_dim=768, reduction=4),
        "pq_learner": PQAdapter(size, 14, context=True, input_dim=768, mid_dim=128, layers_num=4),
    }
    ckpt = {k: dict(v.state_dict()) for k, v in learners.items()}
    layout = {f"{k}.{n}": list(t.shape) for k, s in ckpt.items() for n, t in s.items() if _randomized(f"{k}.{n}", t)}
    for key, value in adapter_state(layout).items():
        group, name = key.split(".", 1)
        ckpt[group][name] = value
    torch.save(ckpt, path)
    return layout


# ----------------------------------------------------------------------------- the reference
class _Stop(Exception):
    """Ends a test run at its evaluator."""


class Recorder:
    """Observes the reference while it runs; patches only what a CPU with today's packages needs.

    Installed once per process (:func:`recorder`); :attr:`weights` is what the next ``adaptcliplib.load``
    builds its model from.
    """

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}
        self.encoded: list[torch.Tensor] = []
        self.out: dict[str, list[torch.Tensor]] = {}
        self.results: dict | None = None

    def reset(self) -> None:
        self.encoded, self.out, self.results = [], {}, None

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

        rec = self

        class Archive:  # what torch.jit.load returns: .eval() and .state_dict()
            def eval(self):
                return self

            def state_dict(self):
                return dict(rec.weights)  # build_model copies them into its parameters

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


_RECORDER: list[Recorder] = []


def recorder(root: Path) -> Recorder:
    """The process's recorder, installed on first use (the patches must not stack)."""
    if not _RECORDER:
        rec = Recorder()
        rec.install(root)
        _RECORDER.append(rec)
    return _RECORDER[0]


def run_main(root: Path, argv: list[str]) -> None:
    """Run ``test.py`` of the reference as ``__main__`` with ``argv``."""
    old_argv, old_cwd = sys.argv, Path.cwd()
    sys.argv = ["test.py", *argv]
    os.chdir(root)
    try:
        runpy.run_path(str(root / "test.py"), run_name="__main__")
        raise RuntimeError("test.py finished without reaching its evaluator")
    except _Stop:
        pass
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)


def sub_step(name: str) -> int:
    """The pixel step a full-size recorded array is stored with (1: every pixel)."""
    if name.endswith("inputs"):
        return SUB_INPUT
    if name.endswith(("logits", "scores", "map1")):
        return 1
    return SUB_FUSED if name.endswith(".maps") else SUB


def _stored(name: str, value: np.ndarray, full: bool) -> dict[str, np.ndarray]:
    """Fixture entries of one recorded array (subsampled at full size, see the module docstring)."""
    step = sub_step(name) if full else 1
    out = {name: value} if step == 1 else {f"{name}_sub": value[..., ::step, ::step].copy()}
    if full and name == "shot1.maps":
        out["shot1.map1"] = value[1]  # the defective image, every pixel
    return out


def record_arch(root: Path, key: str) -> dict[str, np.ndarray]:
    """Both runs of one architecture; returns the fixture arrays, prefixed ``<key>/``."""
    arch = ARCHS[key]
    shapes = clip_shapes(key)
    rec = recorder(root)
    rec.weights = clip_weights(key)
    out: dict[str, np.ndarray] = {"weights_digest": np.array(april_gan_driver().tensor_digest(rec.weights))}
    out["keys_digest"] = np.array(winclip_driver().keys_digest(shapes))
    tests = make_inputs(key)[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_dataset(work / "mvtec", key)
        import adaptcliplib

        model, _ = adaptcliplib.load("ViT-L/14@336px", device="cpu")
        layout = adapter_checkpoint(model, arch.size, work / "adapters.pth")
        del model
        for shots in (0, 1):
            rec.reset()
            argv = ["--test_data_path", str(work / "mvtec"), "--save_path", str(work / f"run{shots}"),
                    "--checkpoint_path", str(work / "adapters.pth"), "--dataset", "mvtec",
                    "--image_size", str(arch.size), "--k_shots", str(shots), "--batch_size", "8",
                    "--visual_learner", "--textual_learner", "--pq_learner", "--pq_context"]  # fmt: skip
            run_main(root, argv)
            images = torch.cat(rec.encoded).float().numpy()
            pre = f"shot{shots}."
            arrays = {"test_inputs": images[-len(tests) :]}
            if shots:
                arrays["prompt_inputs"] = images[: -len(tests)]
            branches = {pre + k: torch.cat(v).numpy() for k, v in rec.out.items()}
            if shots:  # the 1-shot run's VA/TA repeat the zero-shot run's
                branches = {k: v for k, v in branches.items() if ".pq_" in k}
            arrays.update(branches)
            arrays[pre + "maps"] = rec.results["maps"].float().numpy()
            arrays[pre + "scores"] = rec.results["scores"].float().numpy()
            for name, value in arrays.items():
                out.update(_stored(name, value, arch.full))
    adapters = adapter_state(layout)
    out["adapter_layout"] = np.array(json.dumps(layout))
    out["adapter_digest"] = np.array(april_gan_driver().tensor_digest(adapters))
    out["test_categories"] = np.array([c for c, *_ in tests])
    meta = {"reference": f"gaobb/AdaptCLIP@{COMMIT} test.py", "model": arch.model, "size": arch.size}
    out["meta"] = np.array(json.dumps({**meta, "weights_seed": arch.seed, "torch": torch.__version__}))
    rec.weights = {}
    return {f"{key}/{k}": v.astype(np.float32) if v.dtype == np.float64 else v for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="record the AdaptCLIP parity fixture from gaobb/AdaptCLIP")
    parser.add_argument("--adaptclip", type=Path, required=True, help="a copy of gaobb/AdaptCLIP at COMMIT")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS), help="default: all")
    parser.add_argument("--out", type=Path, default=HERE.parent / "fixtures" / "adaptclip.npz")
    args = parser.parse_args()
    out_path = args.out.absolute()
    data = dict(np.load(out_path)) if out_path.is_file() else {}
    root = args.adaptclip.absolute()
    for key in args.arch or sorted(ARCHS):
        data = {k: v for k, v in data.items() if k.startswith(tuple(f"{a}/" for a in ARCHS if a != key))}
        data.update(record_arch(root, key))
        data["commit"] = np.array(COMMIT)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out_path, **data)
        print(f"{key}: zero-shot scores {data[f'{key}/shot0.scores']}, 1-shot {data[f'{key}/shot1.scores']}")


if __name__ == "__main__":
    main()
