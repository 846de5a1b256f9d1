"""Record zqhang/AnomalyCLIP's own entry points (``test.py``, ``train.py``) on seeded random weights.

The reference, zqhang/AnomalyCLIP @ 45ed4dd3 (MIT; :data:`COMMIT`), runs unchanged, as ``__main__``
with its own argument parsers and seed (111), from a copy outside this repository (nothing of it is
stored here), once per architecture in a fresh Python process (its patches and observers are
process-wide):

1. ``test.py`` with a prompt checkpoint in the code's format (``{"prompt_learner": state_dict}``:
   the reference's own learner, its learnable tensors replaced by ours, :func:`prompt_values`):
   the anomaly maps and image scores it hands to its metrics, and on the way the text features
   ``encode_text_learn`` returns, the global image features ``encode_image`` returns and the
   patch–text cosines behind the maps (the observer multiplies the normalised patch tokens and text
   features ``compute_similarity`` receives, CLS dropped, and passes them on untouched);
2. ``train.py``, one epoch, batch size 2: its initial prompts, the batches in its shuffled order,
   the loss of each step, the prompts' gradients before and the prompts after each Adam step.

Architectures (:data:`ARCHS`; the code hard-codes ``DPAM_layer=20``, run with ``--features_list 24``
as its scripts do; deep prompts to text block 9):

- ``full``: the real ``ViT-L-14-336`` the code loads (``AnomalyCLIP_lib.load("ViT-L/14@336px")``),
  built by its own ``build_model`` from the state dict (QuickGELU, as its model always is), run at
  518: its positional embedding is resized 24×24 → 37×37 **bilinearly** (no antialias), in place, at
  the first forward. Weights: the APRIL-GAN driver's :func:`random_state_dict` for open_clip's names
  and shapes of ``ViT-L-14-336`` with its seed (``april_gan.SEED``), the same tensors as the parity
  suite's shared ``seeded_clip_file`` (their :func:`tensor_digest` is stored). Inputs: one class
  (``carpet``), two non-square 300×410 test images of the APRIL-GAN driver (one good, one with a
  painted defect); ``train.py`` runs on the same folder (one step of 2). Maps are stored every
  :data:`SUB`-th pixel for both images and at full resolution for the defective one.
- ``reduced``: the same code on a 24-block CLIP ViT of width 64 (the code derives 1 head from
  width // 64) with a 12-block text tower, patch 14, trained size 56 run at 70 (4×4 → 5×5), the
  WinCLIP driver's seeded weights (:data:`SEED`), four square images in two classes (``carpet``,
  ``bottle``): two Adam steps of ``train.py`` and a cheap always-on check of the same paths.

Patches, none of which can change a recorded number (only to run the code on a CPU with today's
packages): ``pkg_resources``, ``thop``, ``cv2``, ``tabulate`` and ``skimage`` are imported but unused
numerically (stand-ins); the weights are handed to ``model_load.load`` in place of its download and
``torch.jit.load`` (``_download`` returns an existing file that is opened, not read; ``torch.jit.load``
returns an object whose ``state_dict()`` is our tensors, which the code's own ``build_model`` loads
strictly; a plain state-dict file makes the code fail with EOFError); ``Tensor.cuda`` returns the
tensor (``train.py`` moves labels with ``.cuda()``; a CPU has no CUDA); float64 masks of good images
are cast to uint8 for Pillow ≥ 11 (zeros either way). Observers only read values (``torch.Tensor.backward``
and ``torch.optim.Adam`` are wrapped to copy the loss, gradients and prompts). The prompt
checkpoint's layout (names and shapes) is stored so that the test can write a file of the same
format and load it through our converter. The test run stops
inside its first metric call, where every map and score has been computed (the metrics of the
fixed 15-class MVTec list are not needed).

Usage (a copy of zqhang/AnomalyCLIP at :data:`COMMIT`, a checkout or its files; the project's
environment suffices; recording both takes about 5 minutes on 2 busy cores, and repeated
recordings are bit-identical)::

    git clone https://github.com/zqhang/AnomalyCLIP /tmp/AnomalyCLIP && git -C /tmp/AnomalyCLIP checkout 45ed4dd3
    python tests/parity/drivers/anomalyclip.py --anomalyclip /tmp/AnomalyCLIP \
        --arch reduced --arch full --out tests/parity/fixtures/anomalyclip.npz

:data:`ARCHS`, :data:`CONFIG`, :data:`MODEL`, :data:`SUB`, :func:`prompt_values`, :func:`make_inputs`,
:func:`weights_of` and :func:`april_gan_driver` are imported by ``tests/parity/test_anomalyclip.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import runpy
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

COMMIT = "45ed4dd35c05797d854294b5e8d585c545920089"
MODEL = "ViT-anomalyclip-parity"  # the reduced architecture
CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 56, "layers": 24, "width": 64, "head_width": 64, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 12},
}
SIZE = 70  # reduced: 5×5 patches; the weights' positional embedding is 4×4
SEED = 20241218  # reduced weights (the full-size ones use april_gan.SEED)
PROMPT_SEED = 7
PROMPT_STD = 0.1  # ours: larger than the code's 0.02 init so that the prompts matter
N_CTX, DEPTH, T_N_CTX = 12, 9, 4
SUB = 4  # full-size maps: every SUB-th pixel for all images
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Arch:
    """One recorded configuration."""

    model: str
    size: int
    classes: tuple[str, ...]  # carpet first: the first class of test.py's fixed MVTec list
    hw: tuple[int, int] | None = None  # (H, W) of non-square inputs; None: square SIZE×SIZE images


ARCHS = {
    "reduced": Arch(MODEL, SIZE, ("carpet", "bottle")),
    "full": Arch("ViT-L-14-336", 518, ("carpet",), (300, 410)),
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_parity_driver", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def winclip_driver():
    """The WinCLIP driver module (the reduced architecture's seeded weights and images)."""
    return _load("winclip")


def april_gan_driver():
    """The APRIL-GAN driver module (the shared full-size seeded weights and non-square images)."""
    return _load("april_gan")


def prompt_values(width: int = CONFIG["text_cfg"]["width"]) -> dict[str, torch.Tensor]:
    """Our learnable tensors for the inference run (names and shapes of ``AnomalyCLIP_PromptLearner``)."""
    g = torch.Generator().manual_seed(PROMPT_SEED)
    out = {
        "ctx_pos": torch.randn(1, 1, N_CTX, width, generator=g) * PROMPT_STD,
        "ctx_neg": torch.randn(1, 1, N_CTX, width, generator=g) * PROMPT_STD,
    }
    for i in range(DEPTH - 1):
        out[f"compound_prompts_text.{i}"] = torch.randn(T_N_CTX, width, generator=g) * PROMPT_STD
    return out


def make_inputs(key: str = "reduced") -> list[tuple[str, str, np.ndarray, np.ndarray | None]]:
    """(category, defect, (H, W, 3) uint8 image, (H, W) uint8 mask or None) of the test images of ``key``."""
    arch = ARCHS[key]
    if arch.hw is not None:  # full: the APRIL-GAN driver's good and first defective image
        tests, _ = april_gan_driver().make_inputs(arch.hw)
        return [(arch.classes[0], defect, img, mask) for defect, img, mask in tests[:2]]
    images = winclip_driver().make_images([(SIZE, SIZE)] * 4, SEED)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[20:42, 28:50] = 255
    defect = images[2].copy()
    defect[mask > 0] = [240, 240, 40]
    obj_defect = images[0].copy()
    obj_defect[mask > 0] = [30, 200, 220]
    return [
        ("carpet", "good", images[3], None),
        ("carpet", "color", defect, mask),
        ("bottle", "good", images[1], None),
        ("bottle", "broken", obj_defect, mask),
    ]


def weights_of(key: str) -> tuple[dict[str, torch.Tensor], str]:
    """The seeded CLIP weights of ``key`` (open_clip's names, which the code's loader reads) and their digest."""
    import open_clip

    ag = april_gan_driver()
    if key == "full":
        with torch.device("meta"):
            meta = open_clip.model.CLIP(**open_clip.get_model_config(ARCHS[key].model)).state_dict()
        weights = ag.random_state_dict({k: tuple(v.shape) for k, v in meta.items()}, ag.SEED)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / f"{MODEL}.json").write_text(json.dumps(CONFIG))
            open_clip.add_model_config(Path(tmp) / f"{MODEL}.json")
        drv = winclip_driver()
        weights = drv.random_state_dict(
            drv.shapes_of(open_clip.create_model(MODEL, force_quick_gelu=True).state_dict()), SEED
        )
    return weights, ag.tensor_digest(weights)


def write_dataset(root: Path, key: str) -> None:
    """An MVTec-layout folder with the ``meta.json`` the reference's ``Dataset`` reads (its test split)."""
    april_gan_driver().write_meta_dataset(root, make_inputs(key))


class _Stop(Exception):
    """Ends the test run inside its first metric call."""


class Recorder:
    """Observes the reference while it runs; patches only what a CPU with today's packages needs."""

    def __init__(self, weights: dict[str, torch.Tensor], classes: tuple[str, ...]) -> None:
        self.weights = weights
        self.classes = classes
        self.items: list[dict] = []
        self.results: dict | None = None
        self.learners: list = []
        self.losses: list[float] = []
        self.steps: list[dict[str, np.ndarray]] = []
        self.initial: dict[str, np.ndarray] = {}
        self.text: list[np.ndarray] = []  # encode_text_learn outputs (2, E)
        self.embeds: list[np.ndarray] = []  # encode_image global outputs (B, E)
        self.cosines: list[np.ndarray] = []  # patch-text cosines (B, N, 2), CLS dropped

    def install(self, root: Path) -> None:
        import packaging.version
        import PIL.Image

        for name in ("thop", "cv2", "skimage", "tabulate"):  # imported, unused numerically
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["thop"].profile = None
        sys.modules["skimage"].measure = None
        sys.modules["tabulate"].tabulate = lambda *a, **k: ""
        sys.modules.setdefault("pkg_resources", types.SimpleNamespace(packaging=packaging))
        sys.path.insert(0, str(root))
        fromarray = PIL.Image.fromarray

        def fromarray_u8(obj, mode=None):  # Pillow >= 11 refuses float64 'L' arrays (good-image masks)
            if mode == "L" and isinstance(obj, np.ndarray) and obj.dtype == np.float64:
                obj = obj.astype(np.uint8)
            return fromarray(obj, mode) if mode else fromarray(obj)

        PIL.Image.fromarray = fromarray_u8
        torch.Tensor.cuda = lambda self, *a, **k: self  # train.py: label.long().cuda()
        self._weights_loader()
        self._observers()
        self._model_observers()

    def _weights_loader(self) -> None:
        import AnomalyCLIP_lib.model_load as model_load

        weights = self.weights

        class Archive:  # what torch.jit.load returns: .eval() and .state_dict()
            def eval(self):
                return self

            def state_dict(self):
                return {k: v.clone() for k, v in weights.items()}

        model_load._download = lambda url, root=None: __file__  # any existing file: it is opened, not read
        torch.jit.load = lambda *a, **k: Archive()

    def _model_observers(self) -> None:
        """Copy the text features, global image features and patch-text cosines of the test run."""
        import AnomalyCLIP_lib
        from AnomalyCLIP_lib.AnomalyCLIP import AnomalyCLIP

        rec = self
        encode_text_learn, encode_image = AnomalyCLIP.encode_text_learn, AnomalyCLIP.encode_image
        compute_similarity = AnomalyCLIP_lib.compute_similarity

        def text_recorded(model, *a, **k):
            out = encode_text_learn(model, *a, **k)
            rec.text.append(out.detach().float().clone().numpy())
            return out

        def image_recorded(model, *a, **k):
            out = encode_image(model, *a, **k)
            rec.embeds.append(out[0].detach().float().clone().numpy())
            return out

        def similarity_recorded(image_features, text_features, *a, **k):
            cos = image_features[:, 1:] @ text_features.t()  # (B, N, 2): the products its softmax sums
            rec.cosines.append(cos.detach().float().clone().numpy())
            return compute_similarity(image_features, text_features, *a, **k)

        AnomalyCLIP.encode_text_learn = text_recorded
        AnomalyCLIP.encode_image = image_recorded
        AnomalyCLIP_lib.compute_similarity = similarity_recorded

    def _observers(self) -> None:
        import dataset
        import metrics
        import prompt_ensemble

        rec = self
        getitem = dataset.Dataset.__getitem__

        def getitem_recorded(ds, index):
            item = getitem(ds, index)
            rec.items.append({"index": index, "img": item["img"].clone(), "mask": item["img_mask"].clone()})
            return item

        dataset.Dataset.__getitem__ = getitem_recorded

        def first_metric(results, obj, metric):  # the maps of `obj` are already concatenated, the others not
            maps = {c: results[c]["anomaly_maps"] for c in rec.classes}
            maps = {c: m if isinstance(m, np.ndarray) else torch.cat(m).numpy() for c, m in maps.items()}
            rec.results = {c: {"maps": maps[c], "scores": torch.stack(results[c]["pr_sp"])} for c in rec.classes}
            raise _Stop

        metrics.image_level_metrics = first_metric
        init = prompt_ensemble.AnomalyCLIP_PromptLearner.__init__

        def init_recorded(learner, *a, **k):
            init(learner, *a, **k)
            rec.learners.append(learner)

        prompt_ensemble.AnomalyCLIP_PromptLearner.__init__ = init_recorded
        backward = torch.Tensor.backward

        def backward_recorded(tensor, *a, **k):
            rec.losses.append(tensor.detach().item())
            return backward(tensor, *a, **k)

        torch.Tensor.backward = backward_recorded

        class Adam(torch.optim.Adam):
            def __init__(self, params, *a, **k):
                super().__init__(params, *a, **k)
                rec.initial = rec.learnable()

            def step(self, *a, **k):
                grads = rec.learnable(grad=True)
                out = super().step(*a, **k)
                rec.steps.append({**rec.learnable(), **{f"grad.{n}": g for n, g in grads.items()}})
                return out

        torch.optim.Adam = Adam

    def learnable(self, grad: bool = False) -> dict[str, np.ndarray]:
        """The learnable tensors (or their gradients) of the last prompt learner built."""
        keep = ("ctx_pos", "ctx_neg", "compound_prompts_text.")
        named = self.learners[-1].state_dict(keep_vars=True)
        return {k: (v.grad if grad else v).detach().clone().numpy() for k, v in named.items() if k.startswith(keep)}


def run_main(root: Path, script: str, argv: list[str]) -> None:
    """Run ``script`` of the reference as ``__main__`` with ``argv``."""
    old_argv, old_cwd = sys.argv, Path.cwd()
    sys.argv = [script, *argv]
    os.chdir(root)
    try:
        runpy.run_path(str(root / script), run_name="__main__")
    except _Stop:
        pass
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)


def prompt_checkpoint(rec: Recorder, path: Path, width: int) -> dict[str, list[int]]:
    """Write ``{"prompt_learner": state_dict}``: the reference's learner with our learnable values.

    Returns the names and shapes of its state dict (the test rebuilds a file of that layout).
    """
    import AnomalyCLIP_lib
    import prompt_ensemble

    design = {
        "Prompt_length": N_CTX,
        "learnabel_text_embedding_depth": DEPTH,
        "learnabel_text_embedding_length": T_N_CTX,
    }
    model, _ = AnomalyCLIP_lib.load("ViT-L/14@336px", device="cpu", design_details=design)
    state = prompt_ensemble.AnomalyCLIP_PromptLearner(model, design).state_dict()
    ours = prompt_values(width)
    assert set(ours) <= set(state), sorted(set(ours) - set(state))
    state.update(ours)
    torch.save({"prompt_learner": state}, path)
    rec.learners.clear()
    rec.text.clear()
    return {k: list(v.shape) for k, v in state.items()}


def record(root: Path, key: str) -> dict[str, np.ndarray]:
    """Both runs of architecture ``key``; returns the fixture arrays (unprefixed)."""
    arch = ARCHS[key]
    weights, digest = weights_of(key)
    width = weights["ln_final.weight"].shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rec = Recorder(weights, arch.classes)
        rec.install(root)
        write_dataset(work / "mvtec", key)
        layout = prompt_checkpoint(rec, work / "prompts.pth", width)
        common = ["--dataset", "mvtec", "--features_list", "24", "--image_size", str(arch.size)]
        common += ["--depth", str(DEPTH), "--n_ctx", str(N_CTX), "--t_n_ctx", str(T_N_CTX)]
        run_main(root, "test.py", [*common, "--data_path", str(work / "mvtec"), "--save_path", str(work / "test"),
                                   "--checkpoint_path", str(work / "prompts.pth")])  # fmt: skip
        if rec.results is None:
            raise RuntimeError("test.py finished without reaching its first metric")
        test_items, rec.items = rec.items, []
        text, embeds, cosines = rec.text[0], np.concatenate(rec.embeds), np.concatenate(rec.cosines)
        rec.losses.clear()
        run_main(root, "train.py", [*common, "--train_data_path", str(work / "mvtec"), "--save_path",
                                    str(work / "train"), "--batch_size", "2", "--epoch", "1"])  # fmt: skip
    inputs = torch.stack([it["img"] for it in test_items]).numpy()
    maps = np.concatenate([rec.results[c]["maps"] for c in arch.classes]).astype(np.float32)
    order = np.array([it["index"] for it in rec.items])
    train_inputs = torch.stack([it["img"] for it in rec.items]).numpy()
    masks = (torch.stack([it["mask"] for it in rec.items]) > 0.5).numpy().astype(np.uint8)  # train.py's gt
    out = {
        "weights_digest": np.array(digest),
        "keys": np.array(sorted(weights)),
        "checkpoint_layout": np.array(json.dumps(layout)),
        "test_categories": np.array([c for c, *_ in make_inputs(key)]),
        "scores": np.concatenate([rec.results[c]["scores"].numpy() for c in arch.classes]).astype(np.float32),
        "text": text.astype(np.float32),
        "embed": embeds.astype(np.float32),
        "cosines": cosines.astype(np.float32),
        "train_order": order,
        "train_masks": masks,
        "train_losses": np.array(rec.losses),
    }
    # train.py reads the same folder: its batches are the test images, only their order is stored
    assert np.array_equal(train_inputs, inputs[order]), "train.py read other pixels than test.py"
    if arch.hw is None:
        out.update(test_inputs=inputs, maps=maps)
    else:
        defective = next(i for i, (*_, mask) in enumerate(make_inputs(key)) if mask is not None)
        out.update(inputs_sub=inputs[:, :, ::SUB, ::SUB].copy(), maps_sub=maps[:, ::SUB, ::SUB].copy())
        out.update({"map_full": maps[defective], "map_full_index": np.array(defective)})
    out.update({f"init.{k}": v for k, v in rec.initial.items()})
    for i, step in enumerate(rec.steps):
        out.update({f"step{i}.{k}": v for k, v in step.items()})
    meta = {"reference": f"zqhang/AnomalyCLIP@{COMMIT} test.py, train.py", "model": arch.model, "size": arch.size}
    out["meta"] = np.array(json.dumps({**meta, "torch": torch.__version__}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="record the AnomalyCLIP parity fixture from zqhang/AnomalyCLIP")
    parser.add_argument("--anomalyclip", type=Path, required=True, help="a copy of zqhang/AnomalyCLIP at COMMIT")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS), help="default: all")
    parser.add_argument("--out", type=Path, default=HERE.parent / "fixtures" / "anomalyclip.npz")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: record one arch into this file
    args = parser.parse_args()
    if args.one:
        (key,) = args.arch
        np.savez(args.one, **record(args.anomalyclip.absolute(), key))
        return
    out_path = args.out.absolute()
    data = dict(np.load(out_path)) if out_path.is_file() else {}
    for key in args.arch or sorted(ARCHS):
        with tempfile.TemporaryDirectory() as tmp:  # a fresh process: the patches are process-wide
            part = Path(tmp) / "part.npz"
            cmd = [sys.executable, __file__, "--anomalyclip", str(args.anomalyclip), "--arch", key, "--one", str(part)]
            subprocess.run(cmd, check=True)
            data = {k: v for k, v in data.items() if not k.startswith(f"{key}/")}
            data.update({f"{key}/{k}": v for k, v in np.load(part).items()})
        data["commit"] = np.array(COMMIT)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out_path, **data)
        print(f"{key}: scores {data[f'{key}/scores']}, losses {data[f'{key}/train_losses']}")
    print(f"wrote {out_path}: " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in data.items()))


if __name__ == "__main__":
    main()
