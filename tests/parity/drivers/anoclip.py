"""Record hq-deng/AnoVL's own MVTec test entry point (``vl_test.py``) on seeded random weights: the AnoCLIP fixture.

The reference runs unchanged, as its ``__main__``, from a fetched copy outside this repository
(nothing of it is stored here), twice: AnoCLIP (no ``--adapter`` flag: ``--adapter False`` would
still enable TTA, the flag is ``type=bool``) and AnoCLIP+ (``--adapter True --epoch 5``). The
architecture is a 12-block CLIP ViT at 64 px (:data:`CONFIG`; the reference hard-codes its V-V
surgery on the last 12 blocks and reads layer 12), with the seeded weights of the WinCLIP
driver's :func:`random_state_dict`. Only what the reference cannot do on a CPU with today's
packages is patched: an empty ``pkg_resources`` module, float64 masks cast to uint8
for Pillow ≥ 11. Observed, never changed: the preprocessed inputs (``MVTecDataset.__getitem__``),
the maps and image scores (the arguments of ``roc_auc_score``), and, for TTA, the global RNG state
right before each image's adapter reset and before its first noise draw (see :func:`replay_draws`),
plus sums of those draws.

Usage (any AnoVL copy at the commit below, an environment with the project's packages plus
``kornia opencv-python-headless scikit-image tabulate``)::

    git clone https://github.com/hq-deng/AnoVL /tmp/AnoVL && git -C /tmp/AnoVL checkout 3a70bfda
    python tests/parity/drivers/anoclip.py --anovl /tmp/AnoVL --out tests/parity/fixtures/anoclip.npz

:data:`CONFIG`, :func:`make_inputs` and :func:`replay_draws` are imported by
``tests/parity/test_anoclip.py``; they need only numpy and torch.
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
from pathlib import Path

import numpy as np
import torch

ANOVL_COMMIT = "3a70bfdaea6baf1eeb140c5de8155b535bd94833"
MODEL = "ViT-anoclip-parity"  # "ViT" in the name: vl_test.py's LinearLayer branches on it
CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 12, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
SIZE = 64
SEED = 20240911  # weights
RUN_SEED = 111  # vl_test.py --seed, as test_zero_shot.sh
CLASSES = ("bottle", "carpet")  # an object and a texture class (two domain-phrase sets)
EPOCHS = 5
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
HERE = Path(__file__).resolve().parent


def winclip_driver():
    """The WinCLIP driver module (its seeded-weights and image helpers are shared)."""
    spec = importlib.util.spec_from_file_location("winclip_parity_driver", HERE / "winclip.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_inputs() -> list[tuple[str, str, np.ndarray, np.ndarray | None]]:
    """(category, defect, (S, S, 3) uint8 image, (S, S) uint8 mask or None): per class one good, one defective."""
    images = winclip_driver().make_images([(SIZE, SIZE)] * 4, SEED)  # image 0 carries a red square
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[SIZE // 3 : SIZE // 3 + SIZE // 6, SIZE // 2 : SIZE // 2 + SIZE // 8] = 255  # where make_images paints it
    texture_defect = images[2].copy()
    texture_defect[mask > 0] = [240, 240, 40]
    return [
        ("bottle", "good", images[1], None),
        ("bottle", "broken", images[0], mask),
        ("carpet", "good", images[3], None),
        ("carpet", "broken", texture_defect, mask),
    ]


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
def write_dataset(root: Path) -> list[str]:
    """An MVTec-layout folder with meta.json (as AnoVL's data/mvtec.py writes it); returns the image paths in order."""
    from PIL import Image

    meta: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    paths = []
    for category, defect, image, mask in make_inputs():
        rel = f"{category}/test/{defect}/000.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / rel)
        mask_rel = ""
        if mask is not None:
            mask_rel = f"{category}/ground_truth/{defect}/000_mask.png"
            (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / mask_rel)
        item = {"img_path": rel, "mask_path": mask_rel, "cls_name": category, "specie_name": defect}
        meta["test"].setdefault(category, []).append({**item, "anomaly": int(mask is not None)})
        paths.append(rel)
    (root / "meta.json").write_text(json.dumps(meta, indent=4))
    return paths


class Recorder:
    """Observes the reference while it runs; patches only what a CPU with today's packages needs."""

    def __init__(self, k: int) -> None:
        self.k = k  # 2N, the adapter's output size
        self.reset()

    def reset(self) -> None:
        self.started = False
        self.inputs: list[torch.Tensor] = []
        self.metric_calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.states: list[np.ndarray] = []
        self.sums: list[list[float]] = []

    def install(self, anovl: Path) -> None:
        import packaging.version
        import PIL.Image
        import sklearn.metrics

        # gone from setuptools >= 81; AnoVL only compares torch versions with it (clip/clip.py)
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

        getitem = dataset.MVTecDataset.__getitem__

        def getitem_recorded(ds, index):
            item = getitem(ds, index)
            self.started = True
            self.inputs.append(item["img"].clone())
            return item

        dataset.MVTecDataset.__getitem__ = getitem_recorded
        reset_parameters = torch.nn.Linear.reset_parameters

        def reset_recorded(linear):
            adapter = self.started and linear.out_features == self.k
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


def run_reference(anovl: Path, work: Path, weights: Path, config: Path, tta: bool, rec: Recorder) -> dict:
    """Run vl_test.py as __main__ (its own argument parser and seed) and collect what the recorder saw."""
    rec.reset()
    argv = ["vl_test.py", "--mode", "zero_shot", "--dataset", "mvtec", "--data_path", str(work / "mvtec")]
    argv += ["--save_path", str(work / ("tta" if tta else "plain")), "--config_path", str(config)]
    argv += ["--model", MODEL, "--features_list", "3", "6", "9", "12", "--pretrained", str(weights)]
    argv += ["--image_size", str(SIZE), "--seed", str(RUN_SEED)]
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
    n_per_class = len(rec.inputs) // len(CLASSES)
    maps = [rec.metric_calls[2 * c][1].reshape(n_per_class, SIZE, SIZE) for c in range(len(CLASSES))]
    scores = [rec.metric_calls[2 * c + 1][1] for c in range(len(CLASSES))]
    out = {"maps": np.concatenate(maps).astype(np.float32), "scores": np.concatenate(scores).astype(np.float32)}
    out["inputs"] = torch.stack(rec.inputs).numpy()
    if tta:
        out["states"] = np.stack(rec.states)
        out["sums"] = np.array(rec.sums)
    return out


def record(anovl: Path) -> dict[str, np.ndarray]:
    """Both runs; returns the fixture arrays."""
    rec = Recorder(k=2 * 7 * 66)
    rec.install(anovl)
    import open_clip  # AnoVL's vendored copy (first on sys.path)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / f"{MODEL}.json"
        config.write_text(json.dumps(CONFIG))
        open_clip.add_model_config(config)
        model = open_clip.create_model(MODEL, SIZE)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        drv = winclip_driver()
        weights = work / "weights.pt"
        torch.save(drv.random_state_dict(shapes, SEED), weights)
        paths = write_dataset(work / "mvtec")
        plain = run_reference(anovl, work, weights, config, tta=False, rec=rec)
        tta = run_reference(anovl, work, weights, config, tta=True, rec=rec)
    ours = _normalised([img for _, _, img, _ in make_inputs()])
    gap = float(np.abs(plain["inputs"] - ours).max())
    if gap > 1e-5:
        raise SystemExit(f"the reference's preprocessed inputs differ from (u8/255 - mean)/std by {gap}")
    return {
        "images": np.stack([img for _, _, img, _ in make_inputs()]),
        "paths": np.array(paths),
        "maps_plain": plain["maps"],
        "scores_plain": plain["scores"],
        "maps_tta": tta["maps"],
        "scores_tta": tta["scores"],
        "rng_states": tta["states"],
        "draw_sums": tta["sums"],
        "keys_digest": np.array(drv.keys_digest(shapes)),
        "meta": np.array(
            json.dumps(
                {
                    "reference": f"hq-deng/AnoVL@{ANOVL_COMMIT} vl_test.py (MVTec entry point)",
                    "model": MODEL,
                    "config": CONFIG,
                    "weights_seed": SEED,
                    "run_seed": RUN_SEED,
                    "epochs": EPOCHS,
                    "torch": torch.__version__,
                    "input_gap": gap,
                }
            )
        ),
    }


def _normalised(images: list[np.ndarray]) -> np.ndarray:
    x = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return (x - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]


def main() -> None:
    parser = argparse.ArgumentParser(description="record the AnoCLIP parity fixture from hq-deng/AnoVL")
    parser.add_argument("--anovl", type=Path, required=True, help="a work tree of hq-deng/AnoVL at ANOVL_COMMIT")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/fixtures/anoclip.npz"))
    args = parser.parse_args()
    out_path = args.out.absolute()
    out = record(args.anovl.absolute())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **out)
    print(f"wrote {out_path}: " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in out.items()))


if __name__ == "__main__":
    main()
