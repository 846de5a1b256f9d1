"""Record hq-deng/AnoVL's own MVTec test entry point (``vl_test.py``) on seeded random weights: the AnoCLIP fixture.

The reference runs unchanged, as its ``__main__`` with its own argument parser and seed, from a copy
outside this repository (nothing of it is stored here), twice per architecture: AnoCLIP (no
``--adapter`` flag: ``--adapter False`` would still enable TTA, the flag is ``type=bool``) and
AnoCLIP+ (``--adapter True --epoch 5``), with the arguments of its ``test_zero_shot.sh``
(``--features_list 3 6 9 12 --seed 111``; the reference hard-codes its V-V surgery on the last 12
blocks and scores layer 12). Architectures (:data:`ARCHS`), each recorded under its key prefix:

- ``full``: the real ``ViT-B-16-plus-240`` at 240 (``--config_path`` its own
  ``open_clip/model_configs/ViT-B-16-plus-240.json``), weights the APRIL-GAN driver's
  :func:`random_state_dict` with :data:`SEED` (what ``tests/parity/conftest.py::seeded_clip_file``
  writes; their ``tensor_digest`` is stored), one class (``bottle``), one good and one defective
  image of 200×264 px (non-square: the reference's ``Resize((240, 240))`` runs);
- ``reduced``: a 12-block ViT of width 64 at 64 px with a 2-block text tower (:data:`CONFIG`), the
  WinCLIP driver's :func:`random_state_dict`, two classes (``bottle``, an object, and ``carpet``, a
  texture: both domain-phrase sets), one good and one defective 64×64 image each.

The weights reach the reference through its own loader: ``--pretrained <file>`` (its factory's
``load_checkpoint``, strict, for a path that is not a pretrained tag).

Patches, none of which can change a number (only to run it on a CPU with today's packages): an empty
``pkg_resources`` module exposing ``packaging`` (gone from setuptools ≥ 81; AnoVL only compares
torch versions with it); ``PIL.Image.fromarray(<float64 mask>, 'L')`` is refused by Pillow ≥ 11:
cast to uint8 (the masks are 0/1 either way, metric path only). The run is fp32 on CPU (the code
picks ``cpu`` itself when CUDA is absent).

Observed, never changed (wrappers that call the original with the same arguments and return its
result; none draws random numbers): the preprocessed inputs (``MVTecDataset.__getitem__``), the text
means of ``encode_text_with_prompt_ensemble``, the pooled embeddings of each image's 22 augmented
views (the first ``CLIP.encode_image`` after each item) with the ``torch.randperm`` that shuffles them
(stored un-shuffled, in :func:`augment_views` order), the raw patch cosines behind the map (the
argument of the ``torch.softmax`` over [normal, anomalous] at scoring), the maps and image scores
(the arguments of ``roc_auc_score``), and, for TTA, the global RNG state right before each image's
adapter reset and before its first noise draw (see :func:`replay_draws`), plus sums of those draws.
``full`` maps are stored every :data:`SUB`-th pixel for both images and in full for the defective one.

Usage (an AnoVL work tree at :data:`ANOVL_COMMIT` = 3a70bfdaea6baf1eeb140c5de8155b535bd94833; an
environment with the project's packages plus ``kornia opencv-python-headless scikit-image tabulate``;
about 15 minutes on 2 shared cores, mostly the reference's 924 text prompts at context 77, encoded
once per run; ``--arch`` re-records one architecture and keeps the other's entries)::

    git clone https://github.com/hq-deng/AnoVL /tmp/AnoVL && git -C /tmp/AnoVL checkout 3a70bfda
    python tests/parity/drivers/anoclip.py --anovl /tmp/AnoVL [--arch full] [--arch reduced]

:data:`ARCHS`, :data:`SEED`, :func:`make_inputs`, :func:`normalised` and :func:`replay_draws` are
imported by ``tests/parity/test_anoclip.py``; they need only numpy and torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import runpy
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ANOVL_COMMIT = "3a70bfdaea6baf1eeb140c5de8155b535bd94833"
SEED = 20240911  # weights (both architectures) and images
RUN_SEED = 111  # vl_test.py --seed, as test_zero_shot.sh
EPOCHS = 5
K = 2 * 7 * 66  # the adapter's output size: 7 states x 66 templates per polarity
VIEWS = 22  # utils.py::aug: the image and 21 augmented views
SUB = 4  # full-size maps and inputs: every SUB-th pixel
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
HERE = Path(__file__).resolve().parent
CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 12, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class Arch:
    """One recorded configuration."""

    model: str  # "ViT" in the name: vl_test.py's LinearLayer branches on it
    size: int  # --image_size
    hw: tuple[int, int]  # (H, W) of the input images
    classes: tuple[str, ...]
    config: dict | None = None  # None: the reference's own model_configs/<model>.json

    @property
    def grid(self) -> int:
        """Patches per side."""
        patch = (self.config or {"vision_cfg": {"patch_size": 16}})["vision_cfg"]["patch_size"]
        return self.size // patch


ARCHS = {
    "full": Arch("ViT-B-16-plus-240", 240, (200, 264), ("bottle",)),
    "reduced": Arch("ViT-anoclip-parity", 64, (64, 64), ("bottle", "carpet"), CONFIG),
}


def load_driver(name: str):
    """Another parity driver module (``winclip``: images, reduced weights; ``april_gan``: full weights)."""
    spec = importlib.util.spec_from_file_location(f"{name}_parity_driver", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def random_state_dict(key: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The seeded weights of ``key``: APRIL-GAN's generator (``full``, shared), WinCLIP's (``reduced``)."""
    return load_driver("april_gan" if key == "full" else "winclip").random_state_dict(shapes, SEED)


def make_inputs(key: str) -> list[tuple[str, str, np.ndarray, np.ndarray | None]]:
    """(category, defect, (H, W, 3) uint8 image, (H, W) uint8 mask or None): per class one good, one defective."""
    h, w = ARCHS[key].hw
    images = load_driver("winclip").make_images([(h, w)] * 4, SEED)  # image 0 carries a red square
    mask = np.zeros((h, w), np.uint8)
    mask[h // 3 : h // 3 + h // 6, w // 2 : w // 2 + w // 8] = 255  # where make_images paints it
    if key == "full":
        return [("bottle", "good", images[1], None), ("bottle", "broken", images[0], mask)]
    texture_defect = images[2].copy()
    texture_defect[mask > 0] = [240, 240, 40]
    return [
        ("bottle", "good", images[1], None),
        ("bottle", "broken", images[0], mask),
        ("carpet", "good", images[3], None),
        ("carpet", "broken", texture_defect, mask),
    ]


def normalised(images: list[np.ndarray]) -> np.ndarray:
    """(B, 3, H, W) float32 (u8/255 − mean)/std of images already at the model's size."""
    x = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return (x - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]


def replay_draws(states: np.ndarray, k: int, e: int, noise_shape: tuple[int, ...], steps: int = EPOCHS):
    """The reference's draws of one image from its two recorded RNG states.

    ``states[0]`` precedes ``weight_reset`` (``nn.Linear(e, k).reset_parameters()``), ``states[1]``
    the first of the ``steps`` ``torch.normal`` draws of ``TextAdapter.aug`` (σ = 0.05·1.1), which
    follow one another with no other draw in between. Two states, because on the first image the
    lazy V-V surgery builds 12 attention modules (their init draws) between the reset and the noise.

    Returns:
        (weight (k, e), bias (k,), [noise of each step, ``noise_shape``]).
    """
    g = torch.Generator()
    g.set_state(torch.from_numpy(np.asarray(states[0], dtype=np.uint8)))
    weight, bias = torch.empty(k, e), torch.empty(k)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=g)
    bound = 1 / math.sqrt(e)
    torch.nn.init.uniform_(bias, -bound, bound, generator=g)
    g.set_state(torch.from_numpy(np.asarray(states[1], dtype=np.uint8)))
    noise = [torch.normal(0, 0.05 * 1.1, noise_shape, generator=g) for _ in range(steps)]
    return weight, bias, noise


# ----------------------------------------------------------------------------- the reference
def write_dataset(key: str, root: Path) -> list[str]:
    """An MVTec-layout folder with meta.json (as AnoVL's data/mvtec.py writes it); returns the image paths in order."""
    return load_driver("april_gan").write_meta_dataset(root, make_inputs(key), numbered=False)


class Recorder:
    """Observes the reference while it runs; patches only what a CPU with today's packages needs."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = False
        self.inputs: list[torch.Tensor] = []
        self.metric_calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.text: dict[str, np.ndarray] = {}
        self.views: list[np.ndarray] = []  # (22, E) per image, shuffled
        self.perms: list[np.ndarray] = []
        self.cos: list[np.ndarray] = []  # (g, g, 2) per image
        self.states: list[list[np.ndarray]] = []
        self.sums: list[list[float]] = []
        self.want_views = False

    def install(self, anovl: Path) -> None:
        import packaging.version
        import PIL.Image
        import sklearn.metrics

        sys.modules.setdefault("pkg_resources", types.SimpleNamespace(packaging=packaging))
        sys.path.insert(0, str(anovl))
        fromarray = PIL.Image.fromarray

        def fromarray_u8(obj, mode=None):  # Pillow >= 11 refuses float64 'L' arrays (good-image masks)
            if mode == "L" and isinstance(obj, np.ndarray) and obj.dtype == np.float64:
                obj = obj.astype(np.uint8)
            return fromarray(obj, mode) if mode else fromarray(obj)

        PIL.Image.fromarray = fromarray_u8
        roc = sklearn.metrics.roc_auc_score

        def roc_recorded(y_true, y_score, *a, **kw):
            self.metric_calls.append((np.asarray(y_true).copy(), np.asarray(y_score).copy()))
            return roc(y_true, y_score, *a, **kw)

        sklearn.metrics.roc_auc_score = roc_recorded
        import dataset  # AnoVL's
        import open_clip  # AnoVL's vendored copy (first on sys.path)
        import prompt_ensemble

        getitem = dataset.MVTecDataset.__getitem__

        def getitem_recorded(ds, index):
            item = getitem(ds, index)
            self.started = self.want_views = True
            self.inputs.append(item["img"].clone())
            return item

        dataset.MVTecDataset.__getitem__ = getitem_recorded
        encode_text = prompt_ensemble.encode_text_with_prompt_ensemble

        def encode_text_recorded(model, objs, tokenizer, device):
            out = encode_text(model, objs, tokenizer, device)
            self.text = {k: v.detach().float().numpy().copy() for k, v in out[0].items()}  # (E, 2) per class
            return out

        prompt_ensemble.encode_text_with_prompt_ensemble = encode_text_recorded
        encode_image = open_clip.model.CLIP.encode_image

        def encode_image_recorded(model, image, out_layers, normalize=False):
            out = encode_image(model, image, out_layers, normalize)
            if self.want_views:  # the first call after an item: the shuffled augmented views
                self.want_views = False
                self.views.append(out[0][:, 0].detach().float().numpy().copy())  # (22, E): the class token
            return out

        open_clip.model.CLIP.encode_image = encode_image_recorded
        randperm = torch.randperm

        def randperm_recorded(*a, **kw):
            out = randperm(*a, **kw)
            if self.started and len(out) == VIEWS:
                self.perms.append(out.numpy().copy())
            return out

        torch.randperm = randperm_recorded
        softmax = torch.softmax

        def softmax_recorded(x, *a, **kw):
            if self.started and x.dim() == 4 and x.shape[0] == 1 and x.shape[-1] == 2:  # scoring: (1, g, g, 2)
                self.cos.append(x[0].detach().float().numpy().copy())
            return softmax(x, *a, **kw)

        torch.softmax = softmax_recorded
        reset_parameters = torch.nn.Linear.reset_parameters

        def reset_recorded(linear):
            adapter = self.started and linear.out_features == K
            if adapter:
                self.states.append([torch.get_rng_state().numpy().copy()])
            reset_parameters(linear)
            if adapter:
                self.sums.append([linear.weight.double().sum().item(), linear.bias.double().sum().item()])

        torch.nn.Linear.reset_parameters = reset_recorded
        normal = torch.normal

        def normal_recorded(*a, **kw):
            if self.started and len(self.sums[-1]) == 2:  # the first draw of an image's noise
                self.states[-1].append(torch.get_rng_state().numpy().copy())
            out = normal(*a, **kw)
            if self.started:
                self.sums[-1].append(out.double().sum().item())
            return out

        torch.normal = normal_recorded


def run_reference(arch: Arch, anovl: Path, work: Path, weights: Path, config: Path, tta: bool, rec: Recorder):
    """Run vl_test.py as __main__ (its own argument parser and seed) and collect what the recorder saw."""
    rec.reset()
    argv = ["vl_test.py", "--mode", "zero_shot", "--dataset", "mvtec", "--data_path", str(work / "mvtec")]
    argv += ["--save_path", str(work / ("tta" if tta else "plain")), "--config_path", str(config)]
    argv += ["--model", arch.model, "--features_list", "3", "6", "9", "12", "--pretrained", str(weights)]
    argv += ["--image_size", str(arch.size), "--seed", str(RUN_SEED)]
    if tta:
        argv += ["--adapter", "True", "--epoch", str(EPOCHS)]
    old_argv, old_cwd = sys.argv, Path.cwd()
    sys.argv = argv
    os.chdir(anovl)
    try:
        runpy.run_path(str(anovl / "vl_test.py"), run_name="__main__")
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    n_classes = len(arch.classes)
    n = len(rec.inputs) // n_classes
    maps = [rec.metric_calls[2 * c][1].reshape(n, arch.size, arch.size) for c in range(n_classes)]
    scores = [rec.metric_calls[2 * c + 1][1] for c in range(n_classes)]
    out = {"maps": np.concatenate(maps).astype(np.float32), "scores": np.concatenate(scores).astype(np.float32)}
    out["inputs"] = torch.stack(rec.inputs).numpy()
    out["cos"] = np.stack(rec.cos).astype(np.float32)  # (B, g, g, 2)
    if not tta:
        views = []
        for shuffled, perm in zip(rec.views, rec.perms, strict=True):
            ordered = np.empty_like(shuffled)
            ordered[perm] = shuffled  # aug() returns cat(views)[perm]
            views.append(ordered)
        out["views"] = np.stack(views).astype(np.float32)  # (B, 22, E)
        out["text"] = np.stack([rec.text[c].T for c in arch.classes]).astype(np.float32)  # (C, 2, E)
    else:
        out["states"] = np.stack(rec.states)
        out["sums"] = np.array(rec.sums)
    return out


def record_arch(key: str, anovl: Path, rec: Recorder) -> dict[str, np.ndarray]:
    """Both runs of one architecture; returns the fixture arrays, keys prefixed ``<key>/``."""
    import open_clip  # AnoVL's vendored copy (first on sys.path)

    arch = ARCHS[key]
    gen = load_driver("april_gan")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if arch.config is None:
            config = anovl / "open_clip" / "model_configs" / f"{arch.model}.json"
        else:
            config = work / f"{arch.model}.json"
            config.write_text(json.dumps(arch.config))
            open_clip.add_model_config(config)
        with torch.device("meta"):
            model = open_clip.model.CLIP(**json.loads(config.read_text()))
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        weights = random_state_dict(key, shapes)
        torch.save(weights, work / "weights.pt")
        digest = gen.tensor_digest(weights)
        del weights
        paths = write_dataset(key, work / "mvtec")
        plain = run_reference(arch, anovl, work, work / "weights.pt", config, tta=False, rec=rec)
        tta = run_reference(arch, anovl, work, work / "weights.pt", config, tta=True, rec=rec)
    images = [img for _, _, img, _ in make_inputs(key)]
    out = {
        "paths": np.array(paths),
        "scores_plain": plain["scores"],
        "scores_tta": tta["scores"],
        "cos_plain": plain["cos"],
        "cos_tta": tta["cos"],
        "views": plain["views"],
        "text": plain["text"],
        "rng_states": tta["states"],
        "draw_sums": tta["sums"],
        "weights_digest": np.array(digest),
        "keys_digest": np.array(load_driver("winclip").keys_digest(shapes)),
    }
    gap = float(np.abs(plain["inputs"] - tta["inputs"]).max())
    if arch.hw == (arch.size, arch.size):
        gap = max(gap, float(np.abs(plain["inputs"] - normalised(images)).max()))
        if gap > 1e-5:
            raise SystemExit(f"the reference's preprocessed inputs differ from (u8/255 - mean)/std by {gap}")
        out["images"] = np.stack(images)
        out["maps_plain"], out["maps_tta"] = plain["maps"], tta["maps"]
    else:  # large: subsampled, plus the defective image's maps in full
        out["inputs_sub"] = plain["inputs"][:, :, ::SUB, ::SUB].copy()
        for mode, run in (("plain", plain), ("tta", tta)):
            out[f"maps_{mode}_sub"] = run["maps"][:, ::SUB, ::SUB].copy()
            out[f"map1_{mode}"] = run["maps"][1]
    meta = {
        "reference": f"hq-deng/AnoVL@{ANOVL_COMMIT} vl_test.py (MVTec entry point)",
        "arch": key,
        "model": arch.model,
        "config": arch.config or json.loads(config_text(anovl, arch)),
        "weights_seed": SEED,
        "weights_generator": "april_gan" if key == "full" else "winclip",
        "run_seed": RUN_SEED,
        "epochs": EPOCHS,
        "torch": torch.__version__,
    }
    out["meta"] = np.array(json.dumps(meta))
    return {f"{key}/{k}": v for k, v in out.items()}


def config_text(anovl: Path, arch: Arch) -> str:
    """The reference's own model config of ``arch``."""
    return (anovl / "open_clip" / "model_configs" / f"{arch.model}.json").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description="record the AnoCLIP parity fixture from hq-deng/AnoVL")
    parser.add_argument("--anovl", type=Path, required=True, help="a work tree of hq-deng/AnoVL at ANOVL_COMMIT")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS), help="default: all")
    parser.add_argument("--out", type=Path, default=HERE.parent / "fixtures" / "anoclip.npz")
    args = parser.parse_args()
    out_path = args.out.absolute()
    data = dict(np.load(out_path)) if out_path.is_file() else {}
    data = {k: v for k, v in data.items() if "/" in k}  # drop a recording from before the key prefixes
    rec = Recorder()
    rec.install(args.anovl.absolute())
    for key in args.arch or sorted(ARCHS):
        data = {k: v for k, v in data.items() if not k.startswith(f"{key}/")}
        data.update(record_arch(key, args.anovl.absolute(), rec))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **data)
    print(f"wrote {out_path}: " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in data.items()))


if __name__ == "__main__":
    main()
