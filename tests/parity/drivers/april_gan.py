"""Record ByChelsea/VAND-APRIL-GAN's own ``test.py`` (zero-shot and 1-shot) on seeded random weights.

The reference runs unchanged as ``__main__`` with its own argument parser, seeds and checkpoint
argument, from a temporary copy of its files at :data:`COMMIT` (MIT; read from the path given on the
command line, a checkout or a bare git directory; nothing of it is stored in this repository).
Arguments are those of its ``test_zero_shot.sh`` / ``test_few_shot.sh`` (``--features_list 6 12 18 24
--pretrained openai --image_size 518``, few-shot ``--k_shot 1 --seed 42``) on an MVTec-layout folder
with one class (a folder name with an underscore, used verbatim in the prompts), three non-square test
images (one good, two defective) and one good training image (the 1-shot reference).

Architectures (:data:`ARCHS`): ``full`` is the real ``ViT-L-14-336`` run at 518 (its positional
embedding resized 24→37 bicubically with antialias by the code's factory, GELU as its factory builds
it); ``reduced`` is the same structure with width 64 (24 vision blocks, 12 text blocks, patch 14)
trained at 56 and run at 84 (4→6 resize), for an always-on test. Weights: :func:`random_state_dict`
(seeded per tensor name, documented below), handed to the code's own OpenAI loader; the linear layers:
:func:`linear_checkpoint`, saved in the code's format (``{"trainable_linearlayer": LinearLayer
state}``) and loaded through its ``--checkpoint_path``.

Patches, none of which can change a number (only to run it with today's packages):

- ``open_clip.openai.get_pretrained_url`` / ``download_pretrained_from_url``: return our weights file
  instead of downloading; the code's ``load_openai_model`` then loads it as a state dict (its own
  fallback when a file is not a TorchScript archive), builds its OpenAI model, and its factory
  rebuilds the GELU model at 518 and resizes the positional embedding as it always does;
- ``Tensor.to('cuda')`` → CPU: ``VisionTransformer.forward`` moves an unused attention accumulator to
  CUDA (a CPU machine has none; the value never reaches an output);
- ``pkg_resources``, ``cv2``, ``skimage``, ``tabulate``: stand-ins (imported; used only for the
  visualisation files, AUPRO and the log table, none of which feeds a recorded value);
- ``PIL.Image.fromarray(<float64 zeros>, mode='L')`` (the masks of good images, metric path only) is
  refused by Pillow ≥ 11: cast to uint8 (zeros either way);
- ``torch.cuda.amp.autocast`` is inactive on CPU: the run is fp32 (parity is defined in fp32).

Recorded (float32): the anomaly maps and image scores the code hands to ``roc_auc_score`` (the run is
stopped inside its second metric call, the image-level AUROC of the only class; by then all maps and
scores exist), the text embeddings of ``encode_text_with_prompt_ensemble``, the global image
embeddings ``encode_image`` returns, the per-layer logits (B, 2, g, g) and 1-shot distances (B, 1, g, g)
at the moment the code upsamples them. Full-size maps are stored at full resolution for one image and
every 4th pixel for all. Usage::

    python tests/parity/drivers/april_gan.py --april-gan /work/.mirror/ByChelsea+VAND-APRIL-GAN/repo \
        --arch reduced --arch full --out tests/parity/fixtures/april_gan.npz

:func:`random_state_dict`, :func:`tensor_digest`, :func:`linear_checkpoint`, :func:`make_inputs`,
:data:`ARCHS` and :data:`CLASS` are imported by ``tests/parity/test_april_gan.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import runpy
import subprocess
import sys
import tempfile
import types
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

COMMIT = "f13b8a634e04f9fde8fa03db125b25af5695d8e1"
SEED = 20230605  # CLIP weights
LINEAR_SEED = 11  # the linear layers
CLASS = "metal_nut"
LAYERS = (6, 12, 18, 24)
SUB = 4  # full-size maps: every SUB-th pixel for all images


@dataclass(frozen=True)
class Arch:
    """One recorded configuration."""

    model: str
    size: int
    hw: tuple[int, int]  # (H, W) of the non-square inputs
    config: dict = field(default_factory=dict)  # {} = the code's own model_configs/<model>.json


TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 56, "layers": 24, "width": 64, "head_width": 64, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 12},
}
ARCHS = {
    "reduced": Arch("ViT-L-14-aprilgan-parity", 84, (70, 94), TINY),
    "full": Arch("ViT-L-14-336", 518, (300, 410)),
}


# ----------------------------------------------------------------------------- shared inputs
def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded CLIP weights: N(0, 1) from ``torch.Generator(seed + crc32(name))``, scaled per kind.

    Matrices by 1/sqrt(fan-in), ``visual.proj``/``text_projection`` by 1/sqrt(rows), LayerNorm gains
    1 + 0.1·N, biases 0.02·N, embeddings and the class token 0.1·N (positional embedding 0.5·N so that
    its resize matters), ``logit_scale`` = log(100); every value rounded to fp16 (OpenAI's weights are
    fp16 values, and the code's OpenAI loader casts matrices to fp16 before loading: exact for these).
    """
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed + zlib.crc32(name.encode())))
        leaf = name.rsplit(".", 1)[-1]
        if name == "logit_scale":
            out[name] = torch.tensor(float(np.log(100.0)))
        elif ".ln" in f".{name}" and leaf == "weight":
            out[name] = 1.0 + 0.1 * noise
        elif leaf in ("bias", "in_proj_bias"):
            out[name] = 0.02 * noise
        elif name in ("visual.proj", "text_projection"):
            out[name] = noise / shape[0] ** 0.5
        elif name == "visual.positional_embedding":
            out[name] = 0.5 * noise
        elif len(shape) >= 2 and "embedding" not in name:
            out[name] = noise / int(np.prod(shape[1:])) ** 0.5
        else:
            out[name] = 0.1 * noise
    return {k: v.half().float() for k, v in out.items()}  # fp16-representable, as OpenAI's weights


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted names, shapes and float32 bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().float().contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def linear_checkpoint(width: int, embed: int, seed: int = LINEAR_SEED) -> dict[str, dict[str, torch.Tensor]]:
    """The code's checkpoint layout: ``{"trainable_linearlayer": {"fc.<i>.weight|bias": ...}}``, seeded."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(len(LAYERS)):
        state[f"fc.{i}.weight"] = torch.randn(embed, width, generator=g) / width**0.5
        state[f"fc.{i}.bias"] = 0.1 * torch.randn(embed, generator=g)
    return {"trainable_linearlayer": state}


def _field(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = [
        0.5 + 0.25 * np.sin(xx / w * rng.uniform(4, 12) + rng.uniform(0, 6.3)) * np.cos(yy / h * rng.uniform(3, 9))
        for _ in range(3)
    ]
    return np.stack(chans, -1) + rng.normal(0, 0.05, (h, w, 3))


def make_inputs(
    hw: tuple[int, int], seed: int = SEED
) -> tuple[list[tuple[str, np.ndarray, np.ndarray | None]], np.ndarray]:
    """([(defect, (H, W, 3) uint8, (H, W) uint8 mask or None)] × 3 test images, the training good image)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    base = [_field(rng, hw) for _ in range(4)]
    tests = []
    for k, defect in enumerate(("good", "scratch", "color")):
        img = base[k]
        mask = None
        if defect != "good":
            mask = np.zeros(hw, np.uint8)
            r0, c0 = int(h * (0.2 + 0.3 * k / 2)), int(w * (0.55 - 0.3 * k / 2))
            mask[r0 : r0 + h // 4, c0 : c0 + w // 5] = 255
            img = img.copy()
            img[mask > 0] = [0.95, 0.1 * k, 0.2] if k == 1 else [0.1, 0.9, 0.95]
        tests.append((defect, (np.clip(img, 0, 1) * 255).round().astype(np.uint8), mask))
    ref = (np.clip(base[3], 0, 1) * 255).round().astype(np.uint8)
    return tests, ref


def write_meta_dataset(
    root: Path,
    tests: Sequence[tuple[str, str, np.ndarray, np.ndarray | None]],
    goods: Sequence[tuple[str, np.ndarray]] = (),
    numbered: bool = True,
) -> list[str]:
    """An MVTec-layout folder with the ``meta.json`` the references' MVTec datasets read.

    Args:
        root: the dataset folder.
        tests: (category, defect, (H, W, 3) uint8 image, (H, W) uint8 mask or None) per test image.
        goods: (category, image) per normal training image.
        numbered: file stems ``000``, ``001``, … in order; False: every stem ``000``.

    Returns:
        The test images' paths relative to ``root``, in order.
    """
    from PIL import Image

    def save(rel: str, array: np.ndarray) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / rel)

    meta: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    paths = []
    for i, (category, defect, image, mask) in enumerate(tests):
        stem = f"{i:03d}" if numbered else "000"
        rel, mask_rel = f"{category}/test/{defect}/{stem}.png", ""
        save(rel, image)
        if mask is not None:
            mask_rel = f"{category}/ground_truth/{defect}/{stem}_mask.png"
            save(mask_rel, mask)
        item = {"img_path": rel, "mask_path": mask_rel, "cls_name": category, "specie_name": defect}
        meta["test"].setdefault(category, []).append({**item, "anomaly": int(mask is not None)})
        paths.append(rel)
    for j, (category, image) in enumerate(goods):
        rel = f"{category}/train/good/{j:03d}.png"
        save(rel, image)
        item = {"img_path": rel, "mask_path": "", "cls_name": category, "specie_name": "good", "anomaly": 0}
        meta["train"].setdefault(category, []).append(item)
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    return paths


def write_dataset(root: Path, hw: tuple[int, int]) -> None:
    """The test images and the training good image of :func:`make_inputs` in class :data:`CLASS`."""
    tests, ref = make_inputs(hw)
    write_meta_dataset(root, [(CLASS, d, img, mask) for d, img, mask in tests], [(CLASS, ref)])


# ----------------------------------------------------------------------------- the reference
def materialise(source: Path, dest: Path) -> None:
    """The code's files at :data:`COMMIT` (``git show``; a checkout or a bare git dir) into ``dest``."""
    git = ["git", f"--git-dir={source / '.git'}" if (source / ".git").exists() else f"--git-dir={source}"]
    names = subprocess.run(git + ["ls-tree", "-r", "--name-only", COMMIT], capture_output=True, text=True, check=True)
    for name in names.stdout.split():
        if name.endswith((".py", ".json", ".gz")) and not name.startswith(("exps/", "data/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            blob = subprocess.run(git + ["show", f"{COMMIT}:{name}"], capture_output=True, check=True).stdout
            (dest / name).write_bytes(blob)


def _module(name: str, **attrs) -> types.ModuleType:
    import importlib.machinery

    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _stubs() -> None:
    """Stand-ins for modules imported but not used for any recorded value."""
    import packaging.version

    _module("pkg_resources", packaging=types.SimpleNamespace(version=packaging.version))
    _module(
        "cv2",
        COLOR_BGR2RGB=0,
        COLOR_RGB2BGR=0,
        COLORMAP_JET=0,
        imread=lambda path: np.zeros((2, 2, 3), np.uint8),
        resize=lambda img, wh: np.zeros((wh[1], wh[0], 3), np.uint8),
        cvtColor=lambda img, code: img,
        applyColorMap=lambda x, code: np.repeat(x[..., None], 3, -1),
        imwrite=lambda path, img: True,
    )
    _module("skimage", measure=_module("skimage.measure"))
    _module("tabulate", tabulate=lambda *a, **k: "")


class _Stop(Exception):
    """Ends the run inside the image-level metric call."""


class Recorder:
    """Observes one run of ``test.py``."""

    def __init__(self) -> None:
        self.metric_calls: list[np.ndarray] = []
        self.text: dict[str, np.ndarray] = {}
        self.embeds: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []
        self.dists: list[np.ndarray] = []
        self.active = False

    def install(self, weights_file: Path) -> list:
        """Patch (see the module docstring) and observe; returns the undo list."""
        import open_clip  # the code's vendored package (its folder is first on sys.path)
        import open_clip.openai as oa
        import PIL.Image
        import prompt_ensemble
        import sklearn.metrics
        import torch.nn.functional as F

        undo = []

        def setattr_undo(obj, name, value):
            undo.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)

        setattr_undo(oa, "get_pretrained_url", lambda name, tag: "parity://seeded-weights")
        setattr_undo(oa, "download_pretrained_from_url", lambda url, cache_dir=None: str(weights_file))
        to = torch.Tensor.to

        def to_cpu(t, *a, **k):
            a = tuple("cpu" if x == "cuda" else x for x in a)
            return to(t, *a, **k)

        setattr_undo(torch.Tensor, "to", to_cpu)
        fromarray = PIL.Image.fromarray

        def fromarray_u8(obj, mode=None):
            if mode == "L" and getattr(obj, "dtype", None) == np.float64:
                obj = obj.astype(np.uint8)
            return fromarray(obj) if mode is None else fromarray(obj, mode=mode)

        setattr_undo(PIL.Image, "fromarray", fromarray_u8)
        rec = self
        encode_text = prompt_ensemble.encode_text_with_prompt_ensemble

        def encode_recorded(model, objs, tokenizer, device):
            out = encode_text(model, objs, tokenizer, device)
            rec.text = {k: v.float().numpy().copy() for k, v in out.items()}
            rec.active = True
            return out

        setattr_undo(prompt_ensemble, "encode_text_with_prompt_ensemble", encode_recorded)
        encode_image = open_clip.model.CLIP.encode_image

        def image_recorded(model, image, out_layers, normalize=False):
            pooled, tokens = encode_image(model, image, out_layers, normalize)
            if rec.active:
                rec.embeds.append(pooled.detach().float().numpy().copy())
            return pooled, tokens

        setattr_undo(open_clip.model.CLIP, "encode_image", image_recorded)
        interpolate = F.interpolate

        def interp_recorded(x, *a, **k):
            if rec.active and k.get("align_corners") and k.get("mode") == "bilinear":
                (rec.logits if x.shape[1] == 2 else rec.dists).append(x.detach().float().numpy().copy())
            return interpolate(x, *a, **k)

        setattr_undo(F, "interpolate", interp_recorded)
        roc = sklearn.metrics.roc_auc_score

        def roc_recorded(y, score, *a, **k):
            rec.metric_calls.append(np.asarray(score, np.float64).copy())
            if len(rec.metric_calls) == 2:
                raise _Stop
            return roc(y, score, *a, **k)

        setattr_undo(sklearn.metrics, "roc_auc_score", roc_recorded)
        return undo


def run_test_py(ref: Path, arch: Arch, mode: str, work: Path) -> Recorder:
    """Run the code's ``test.py`` as ``__main__`` in ``mode`` (zero_shot | few_shot)."""
    config = ref / "open_clip" / "model_configs" / f"{arch.model}.json"
    argv = ["test.py", "--mode", mode, "--dataset", "mvtec", "--data_path", str(work / "data"),
            "--save_path", str(work / f"results_{mode}"), "--config_path", str(config),
            "--checkpoint_path", str(work / "linear.pth"), "--model", arch.model,
            "--features_list", *map(str, LAYERS), "--pretrained", "openai", "--image_size", str(arch.size)]  # fmt: skip
    if mode == "few_shot":
        argv += ["--few_shot_features", *map(str, LAYERS), "--k_shot", "1", "--seed", "42"]
    rec = Recorder()
    undo = rec.install(work / "weights.pt")
    old_argv, old_cwd = sys.argv, Path.cwd()
    sys.argv = argv
    os.chdir(ref)
    try:
        runpy.run_path(str(ref / "test.py"), run_name="__main__")
        raise RuntimeError("test.py finished without reaching its image-level metric")
    except _Stop:
        pass
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)
    return rec


def record_arch(source: Path, key: str) -> dict[str, np.ndarray]:
    """Both modes of one architecture → fixture entries prefixed ``<key>/``."""
    arch = ARCHS[key]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ref = work / "ref"
        materialise(source, ref)
        if arch.config:
            (ref / "open_clip" / "model_configs" / f"{arch.model}.json").write_text(json.dumps(arch.config))
        cfg = arch.config or json.loads((ref / "open_clip" / "model_configs" / f"{arch.model}.json").read_text())
        write_dataset(work / "data", arch.hw)
        _stubs()
        for name in [m for m in sys.modules if m == "open_clip" or m.startswith("open_clip.")]:
            del sys.modules[name]
        sys.path.insert(0, str(ref))
        try:
            from open_clip.model import CLIP

            with torch.device("meta"):
                shapes = {k: tuple(v.shape) for k, v in CLIP(**cfg).state_dict().items()}
            weights = random_state_dict(shapes)
            torch.save(weights, work / "weights.pt")
            linear = linear_checkpoint(cfg["vision_cfg"]["width"], cfg["embed_dim"])
            torch.save(linear, work / "linear.pth")
            runs = {mode: run_test_py(ref, arch, mode, work) for mode in ("zero_shot", "few_shot")}
        finally:
            sys.path.remove(str(ref))
            for name in [m for m in sys.modules if m.split(".")[0] in ("open_clip", "test", "model", "few_shot",
                                                                        "dataset", "prompt_ensemble")]:  # fmt: skip
                del sys.modules[name]
    out = {
        "weights_digest": np.array(tensor_digest(weights)),
        "linear_digest": np.array(tensor_digest(linear["trainable_linearlayer"])),
    }
    out["keys"] = np.array(sorted(shapes))
    for mode, rec in runs.items():
        m = "zero" if mode == "zero_shot" else "few"
        maps = rec.metric_calls[0].reshape(-1, arch.size, arch.size).astype(np.float32)
        if arch.size > 200:
            out[f"{m}/maps_sub"] = maps[:, ::SUB, ::SUB].copy()
            out[f"{m}/map1"] = maps[1]
        else:
            out[f"{m}/maps"] = maps
        out[f"{m}/scores"] = rec.metric_calls[1].astype(np.float64)
        out[f"{m}/text"] = rec.text[CLASS].astype(np.float32)
        n_test = maps.shape[0]
        out[f"{m}/embed"] = np.concatenate(rec.embeds[-(2 if m == "few" else 1) * n_test :: 2 if m == "few" else 1])
        out[f"{m}/logits"] = np.stack([np.concatenate(rec.logits[i * 4 : i * 4 + 4]) for i in range(n_test)])
        if rec.dists:
            out[f"{m}/dists"] = np.stack([np.concatenate(rec.dists[i * 4 : i * 4 + 4])[:, 0] for i in range(n_test)])
    return {f"{key}/{k}": v for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--april-gan", type=Path, required=True, help="checkout or bare git dir of VAND-APRIL-GAN")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS), help="default: all")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "fixtures" / "april_gan.npz")
    args = parser.parse_args()
    data = dict(np.load(args.out)) if args.out.is_file() else {}
    for key in args.arch or sorted(ARCHS):
        data = {k: v for k, v in data.items() if not k.startswith(f"{key}/")}
        data.update(record_arch(args.april_gan, key))
        data["commit"] = np.array(COMMIT)
        np.savez_compressed(args.out, **data)
        print(f"{key}: zero-shot scores {data[f'{key}/zero/scores']}, few-shot {data[f'{key}/few/scores']}")


if __name__ == "__main__":
    main()
