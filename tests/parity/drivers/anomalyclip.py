"""Record zqhang/AnomalyCLIP's own entry points (``test.py``, ``train.py``) on seeded random weights.

The reference runs unchanged, as ``__main__`` with its own argument parsers and seed (111), from a
copy outside this repository (nothing of it is stored here):

1. ``test.py`` with a prompt checkpoint whose learnable tensors are ours (:func:`prompt_values`):
   the anomaly maps and image scores it hands to its metrics;
2. ``train.py``, one epoch, batch size 2: its initial prompts, the batches in its shuffled order,
   the loss of each step, the prompts' gradients before and the prompts after each Adam step.

The architecture (:data:`CONFIG`) is a 24-block CLIP ViT (the code hard-codes ``DPAM_layer=20``
and ``--features_list 24``) with a 12-block text tower (deep prompts to block 9), widths 64
(the code derives 1 head from width // 64), patch 14, trained size 56 run at 70 px (its positional
embedding is resized 4×4 → 5×5 bilinearly, in place, at the first forward), with the seeded weights
of the WinCLIP driver's :func:`random_state_dict`. Only what the reference cannot do on a CPU with
today's packages is patched: ``pkg_resources``, ``thop``, ``cv2``, ``tabulate`` and
``skimage`` are imported but unused numerically (empty stand-ins); the weights are handed to
``model_load.load`` in place of its download and ``torch.jit.load`` (a plain state-dict file makes
it fail with EOFError); ``Tensor.cuda`` returns the tensor (``train.py`` moves labels with
``.cuda()``); float64 masks of good images are cast to uint8 for Pillow ≥ 11. The test run stops
inside its first metric call, where every map and score has been computed (the metrics of the
fixed 15-class MVTec list are not needed).

Usage (a copy of zqhang/AnomalyCLIP at the commit below; the project's environment suffices)::

    git clone https://github.com/zqhang/AnomalyCLIP /tmp/AnomalyCLIP && git -C /tmp/AnomalyCLIP checkout 45ed4dd3
    python tests/parity/drivers/anomalyclip.py --anomalyclip /tmp/AnomalyCLIP \
        --out tests/parity/fixtures/anomalyclip.npz

:data:`CONFIG`, :data:`MODEL`, :data:`SIZE`, :data:`SEED` and :func:`prompt_values` are imported by
``tests/parity/test_anomalyclip.py``.
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
from pathlib import Path

import numpy as np
import torch

COMMIT = "45ed4dd35c05797d854294b5e8d585c545920089"
MODEL = "ViT-anomalyclip-parity"
CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 56, "layers": 24, "width": 64, "head_width": 64, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 12},
}
SIZE = 70  # 5×5 patches; the weights' positional embedding is 4×4
SEED = 20241218  # weights
PROMPT_SEED = 7
PROMPT_STD = 0.1  # ours: larger than the code's 0.02 init so that the prompts matter
CLASSES = ("carpet", "bottle")  # carpet first: the first class of test.py's fixed MVTec list
N_CTX, DEPTH, T_N_CTX = 12, 9, 4
HERE = Path(__file__).resolve().parent


def winclip_driver():
    """The WinCLIP driver module (its seeded-weights and image helpers are shared)."""
    spec = importlib.util.spec_from_file_location("winclip_parity_driver", HERE / "winclip.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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


def make_inputs() -> list[tuple[str, str, np.ndarray, np.ndarray | None]]:
    """(category, defect, (S, S, 3) uint8 image, (S, S) uint8 mask or None): per class one good, one defective."""
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


def write_dataset(root: Path) -> None:
    """An MVTec-layout folder with the ``meta.json`` the reference's ``Dataset`` reads (its test split)."""
    from PIL import Image

    meta: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for i, (category, defect, image, mask) in enumerate(make_inputs()):
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
    (root / "meta.json").write_text(json.dumps(meta, indent=4))


class _Stop(Exception):
    """Ends the test run inside its first metric call."""


class Recorder:
    """Observes the reference while it runs; patches only what a CPU with today's packages needs."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        self.weights = weights
        self.items: list[dict] = []
        self.results: dict | None = None
        self.learners: list = []
        self.losses: list[float] = []
        self.steps: list[dict[str, np.ndarray]] = []
        self.initial: dict[str, np.ndarray] = {}

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
            maps = {c: results[c]["anomaly_maps"] for c in CLASSES}
            maps = {c: m if isinstance(m, np.ndarray) else torch.cat(m).numpy() for c, m in maps.items()}
            rec.results = {c: {"maps": maps[c], "scores": torch.stack(results[c]["pr_sp"])} for c in CLASSES}
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


def prompt_checkpoint(rec: Recorder, path: Path) -> None:
    """A ``{"prompt_learner": state_dict}`` file: the reference's learner (buffers) with our learnable values."""
    import AnomalyCLIP_lib
    import prompt_ensemble

    design = {
        "Prompt_length": N_CTX,
        "learnabel_text_embedding_depth": DEPTH,
        "learnabel_text_embedding_length": T_N_CTX,
    }
    model, _ = AnomalyCLIP_lib.load("ViT-L/14@336px", device="cpu", design_details=design)
    state = prompt_ensemble.AnomalyCLIP_PromptLearner(model, design).state_dict()
    state.update(prompt_values())
    torch.save({"prompt_learner": state}, path)
    rec.learners.clear()


def record(root: Path) -> dict[str, np.ndarray]:
    """Both runs; returns the fixture arrays."""
    import open_clip

    drv = winclip_driver()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / f"{MODEL}.json").write_text(json.dumps(CONFIG))
        open_clip.add_model_config(work / f"{MODEL}.json")
        shapes = drv.shapes_of(open_clip.create_model(MODEL, force_quick_gelu=True).state_dict())
        rec = Recorder(drv.random_state_dict(shapes, SEED))
        rec.install(root)
        write_dataset(work / "mvtec")
        prompt_checkpoint(rec, work / "prompts.pth")
        common = ["--dataset", "mvtec", "--features_list", "24", "--image_size", str(SIZE)]
        common += ["--depth", str(DEPTH), "--n_ctx", str(N_CTX), "--t_n_ctx", str(T_N_CTX)]
        run_main(root, "test.py", [*common, "--data_path", str(work / "mvtec"), "--save_path", str(work / "test"),
                                   "--checkpoint_path", str(work / "prompts.pth")])  # fmt: skip
        test_items, rec.items = rec.items, []
        rec.losses.clear()
        run_main(root, "train.py", [*common, "--train_data_path", str(work / "mvtec"), "--save_path",
                                    str(work / "train"), "--batch_size", "2", "--epoch", "1"])  # fmt: skip
    results = rec.results
    out = {
        "test_inputs": torch.stack([it["img"] for it in test_items]).numpy(),
        "test_categories": np.array([c for c, *_ in make_inputs()]),
        "maps": np.concatenate([results[c]["maps"] for c in CLASSES]).astype(np.float32),
        "scores": np.concatenate([results[c]["scores"].numpy() for c in CLASSES]).astype(np.float32),
        "train_order": np.array([it["index"] for it in rec.items]),
        "train_inputs": torch.stack([it["img"] for it in rec.items]).numpy(),
        "train_masks": torch.stack([it["mask"] for it in rec.items]).numpy(),
        "train_losses": np.array(rec.losses),
        "keys_digest": np.array(drv.keys_digest(shapes)),
    }
    out.update({f"init.{k}": v for k, v in rec.initial.items()})
    for i, step in enumerate(rec.steps):
        out.update({f"step{i}.{k}": v for k, v in step.items()})
    meta = {"reference": f"zqhang/AnomalyCLIP@{COMMIT} test.py, train.py", "model": MODEL, "config": CONFIG}
    out["meta"] = np.array(json.dumps({**meta, "weights_seed": SEED, "torch": torch.__version__}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="record the AnomalyCLIP parity fixture from zqhang/AnomalyCLIP")
    parser.add_argument("--anomalyclip", type=Path, required=True, help="a copy of zqhang/AnomalyCLIP at COMMIT")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/fixtures/anomalyclip.npz"))
    args = parser.parse_args()
    out_path = args.out.absolute()
    out = record(args.anomalyclip.absolute())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **out)
    print(f"wrote {out_path}: " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in out.items()))


if __name__ == "__main__":
    main()
