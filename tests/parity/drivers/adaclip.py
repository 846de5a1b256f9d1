"""Record the official AdaCLIP code (its ``AdaCLIP_Trainer``) on seeded random CLIP weights.

The reference, caoyunkang/AdaCLIP @ :data:`COMMIT` (MIT), runs from a temporary copy of its ``method/``
package, ``loss.py`` and ``model_configs/`` (read from the path given on the command line, a checkout or
a bare git directory; nothing of it is stored in this repository). It is driven through its own
``AdaCLIP_Trainer`` with the arguments of ``test.py`` (``--model ViT-L-14-336 --image_size 518
--prompting_depth 4 --prompting_length 5 --prompting_type SD --prompting_branch VL --use_hsf True
--k_clusters 20``, output layers the multiples of depth // 4): the trainer builds the CLIP through the
code's ``create_model_and_transforms(..., pretrained='openai')`` (its OpenAI loader, then its own
``CLIP`` at the run size, the positional embedding resized by its ``resize_pos_embed``: bicubic, no
antialias; GELU, as its configs have no ``quick_gelu``), loads the learnable parts with its
``load(ckpt_path)``, preprocesses PNG files with its ``preprocess`` / ``transform`` and evaluates with
its ``evaluation`` (autocast is inactive on CPU: fp32) and computes one training loss with its
``train_one_batch``.

Architectures (:data:`ARCHS`): ``full`` is the real ``ViT-L-14-336`` run at 518 (24→37 positional
resize), two non-square test images (one good, one defective; class words ``metal_nut`` and
``pipe-fryum``, whose ``-`` the code turns into a space); ``reduced`` is the same structure with width 64
(24 vision blocks, 12 text blocks, patch 14, ``embed_dim`` = text width as AdaCLIP's text prompts need)
trained at 56 and run at 84 (4→6 resize), three test images (one good, two defective). Weights: the
APRIL-GAN driver's ``random_state_dict`` (fp16-representable, seeded per name with its ``SEED``, the
same values the parity suite's ``seeded_clip_file`` writes), saved with ``torch.save`` and handed to the
code's OpenAI loader. Learnable parts: :func:`learnable_checkpoint`, seeded by the names
``AdaCLIP_Trainer.save`` writes, saved in that format and loaded through the trainer's ``load``.

Patches, none of which can change a number (only to run it here):

- ``method.custom_clip.get_pretrained_cfg`` / ``download_pretrained_from_url``: return our weights file
  instead of downloading (the ``reduced`` name has no entry in the code's table). The code's
  ``load_openai_model`` loads it as a state dict (its fallback when a file is not a TorchScript
  archive), builds its OpenAI model, casts to fp16 and back (exact for these values);
- the repository's BPE vocabulary is a Git LFS pointer: open_clip's identical file (sha256 checked);
- ``pkg_resources``, ``cv2``, ``tools``: stand-ins (imported; ``pkg_resources.packaging`` only selects the
  token dtype, ``cv2`` and ``tools`` serve visualisation, logging and metrics, which feed no recorded
  value; the metric stand-in records the maps and scores ``evaluation`` hands to it);
- ``Tensor.backward`` raises inside ``train_one_batch`` to record its loss: the code's backward fails in
  fp32 on CPU (in-place divisions of tensors autograd saved; on GPU autocast's fp16 copies hide them),
  and nothing after the loss is recorded.

Recorded per architecture (float32): the smoothed maps and image scores ``evaluation`` computes
(``full``: every 4th pixel of all maps plus the defective image's map in full), the inputs of
``visual_text_similarity`` (text embeddings (2, E), projected image embedding (E,), per-layer patch
cosines with the two text embeddings), the k-means labels the HSF drew (``random_state=None``; replayed
on our side through ``ctx.hooks["adaclip.kmeans"]``), the training loss of the defective image 1 and
its ground truth as the code's ``transform`` makes it, the digests of the weights and the learnable
parts. Usage::

    python tests/parity/drivers/adaclip.py --adaclip /work/.mirror/caoyunkang+AdaCLIP/repo \
        --arch reduced --arch full --out tests/parity/fixtures/adaclip.npz

:func:`learnable_checkpoint`, :func:`make_inputs`, :data:`ARCHS` and :func:`april_gan_driver` are
imported by ``tests/parity/test_adaclip.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
COMMIT = "e27ee32b"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
LEARNABLE_SEED = 20240716
KMEANS_SEED = 111  # test.py's setup_seed(111) seeds NumPy, which KMeans(random_state=None) draws from
SUB = 4  # full-size maps: every SUB-th pixel for all images
TRAIN_IMAGE = 1  # the defective image whose training loss is recorded


@dataclass(frozen=True)
class Arch:
    """One recorded configuration."""

    model: str
    size: int
    hw: tuple[int, int]  # (H, W) of the non-square inputs
    classes: tuple[str, ...]  # one class word per test image (its folder name)
    config: dict = field(default_factory=dict)  # {} = the code's own model_configs/<model>.json


TINY = {
    "embed_dim": 64,  # = text width: AdaCLIP's text prompts have the embedding's width
    "vision_cfg": {"image_size": 56, "layers": 24, "width": 64, "head_width": 64, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 12},
}
ARCHS = {
    "reduced": Arch("ViT-L-14-adaclip-parity", 84, (70, 94), ("metal_nut", "bottle", "pipe-fryum"), TINY),
    "full": Arch("ViT-L-14-336", 518, (300, 410), ("metal_nut", "pipe-fryum")),
}


def april_gan_driver():
    """The APRIL-GAN driver module (its seeded weights, digest and images are shared)."""
    spec = importlib.util.spec_from_file_location("april_gan_parity_driver", HERE / "april_gan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- shared inputs
def learnable_checkpoint(shapes: dict[str, tuple[int, ...]], seed: int = LEARNABLE_SEED) -> dict[str, torch.Tensor]:
    """Seeded learnable parts under the names ``AdaCLIP_Trainer.save`` writes (``clip_model.…``).

    N(0, 1) from ``torch.Generator(seed + crc32(name))``; static prompts × 0.5 (large enough to
    matter), biases × 0.02, ``Linear`` weights / sqrt(fan-in).
    """
    out = {}
    for name in sorted(shapes):
        noise = torch.randn(shapes[name], generator=torch.Generator().manual_seed(seed + zlib.crc32(name.encode())))
        if "static_prompts" in name:
            out[name] = 0.5 * noise
        elif name.endswith("bias"):
            out[name] = 0.02 * noise
        else:  # Linear weights (out, in)
            out[name] = noise / shapes[name][1] ** 0.5
    return out


def make_inputs(arch: Arch) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """[(class word, (H, W, 3) uint8 image, (H, W) uint8 mask or None)]: image 0 good, the others defective."""
    tests, _ = april_gan_driver().make_inputs(arch.hw)
    return [(cls, img, mask) for cls, (_, img, mask) in zip(arch.classes, tests, strict=False)]


def keys_digest(shapes: dict[str, tuple[int, ...]]) -> str:
    """Digest of the state-dict names and shapes (the code's CLIP and open_clip's must agree)."""
    return hashlib.sha256("\n".join(f"{k}:{tuple(shapes[k])}" for k in sorted(shapes)).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the reference
def _git(source: Path) -> list[str]:
    return ["git", f"--git-dir={source / '.git'}" if (source / ".git").exists() else f"--git-dir={source}"]


def materialise(source: Path, dest: Path) -> None:
    """``method/``, ``loss.py`` and ``model_configs/`` at :data:`COMMIT` into ``dest``; the real BPE vocabulary."""
    import open_clip

    names = subprocess.run(_git(source) + ["ls-tree", "-r", "--name-only", COMMIT], capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    for name in names:
        if name.startswith(("method/", "model_configs/")) or name == "loss.py":
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            blob = subprocess.run(_git(source) + ["show", f"{COMMIT}:{name}"], capture_output=True, check=True).stdout
            (dest / name).write_bytes(blob)
    vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if hashlib.sha256(vocab.read_bytes()).hexdigest() != VOCAB_SHA256:
        raise SystemExit(f"{vocab} is not the BPE vocabulary of the reference (sha256 differs)")
    (dest / "method" / "bpe_simple_vocab_16e6.txt.gz").write_bytes(vocab.read_bytes())


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


class _Stop(Exception):
    """Ends ``train_one_batch`` at its backward, carrying the loss."""


class Recorder:
    """Observes the reference (see the module docstring)."""

    def __init__(self) -> None:
        self.metric_results: dict | None = None
        self.similarity: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (text, image embed, cosines)
        self.kmeans: list[np.ndarray] = []

    def stubs(self) -> None:
        """Stand-ins for modules imported but not used for any recorded value."""
        import packaging.version

        rec = self
        _module("pkg_resources", packaging=types.SimpleNamespace(version=packaging.version))
        _module("cv2", imread=lambda path: np.zeros((2, 2, 3), np.uint8), resize=lambda img, wh: img)

        def calculate_metric(results, obj):
            rec.metric_results = results
            return {}

        _module("tools", visualization=types.SimpleNamespace(plot_sample_cv2=lambda *a, **k: None),
                calculate_metric=calculate_metric, calculate_average_metric=lambda d: {})  # fmt: skip

    def observe(self, model) -> None:
        """Record the inputs of ``visual_text_similarity`` and the HSF's k-means labels."""
        clip_model = model.clip_model
        similarity = clip_model.visual_text_similarity
        rec = self

        def similarity_recorded(image_feature, patch_token, text_feature, aggregation):
            text = text_feature[0].detach().float()  # (E, 2)
            cos = torch.stack([(p[0].detach().float() @ text) for p in patch_token])  # (L, N, 2)
            rec.similarity.append((text.T.numpy().copy(), image_feature[0].detach().float().numpy().copy(),
                                   cos.numpy().copy()))  # fmt: skip
            return similarity(image_feature, patch_token, text_feature, aggregation)

        clip_model.visual_text_similarity = similarity_recorded
        performer = clip_model.HSF.cluster_performer
        fit_predict = performer.fit_predict

        def fit_predict_recorded(data, *a, **kw):
            labels = fit_predict(data, *a, **kw)
            rec.kmeans.append(np.asarray(labels).copy())
            return labels

        performer.fit_predict = fit_predict_recorded


def _trainer(arch: Arch, cfg: dict, weights_file: Path, work: Path):
    """The code's ``AdaCLIP_Trainer`` as ``test.py`` builds it, on our weights and learnable checkpoint."""
    import method.custom_clip as custom_clip
    from method import AdaCLIP_Trainer

    custom_clip.get_pretrained_cfg = lambda model, tag: {"url": "parity://seeded-weights"}
    custom_clip.download_pretrained_from_url = lambda url, cache_dir=None: str(weights_file)
    n_layers = cfg["vision_cfg"]["layers"]
    model = AdaCLIP_Trainer(backbone=arch.model, feat_list=[n_layers // 4 * i for i in range(1, 5)],
                            input_dim=cfg["vision_cfg"]["width"], output_dim=cfg["embed_dim"], learning_rate=0.0,
                            device="cpu", image_size=arch.size, prompting_depth=4, prompting_length=5,
                            prompting_branch="VL", prompting_type="SD", use_hsf=True, k_clusters=20)  # fmt: skip
    names = [k for k in model.state_dict() if any(n in k for n in model.learnable_paramter_list)]
    checkpoint = learnable_checkpoint({k: tuple(model.state_dict()[k].shape) for k in names})
    torch.save(checkpoint, work / "adaclip.pth")
    model.load(str(work / "adaclip.pth"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in checkpoint.items()), "the checkpoint did not load"
    return model, checkpoint


def _items(model, arch: Arch, work: Path) -> list[dict]:
    """The dataset items ``evaluation`` and ``train_one_batch`` read, from PNG files (batch size 1)."""
    from PIL import Image

    items = []
    for i, (cls, img, mask) in enumerate(make_inputs(arch)):
        path = work / f"{i:03d}.png"
        Image.fromarray(img).save(path)
        pil = Image.open(path).convert("RGB")
        if mask is None:  # base_dataset.py: zeros for good images
            gt = Image.fromarray(np.zeros(arch.hw, np.uint8), mode="L")
        else:
            Image.fromarray(mask).save(work / f"{i:03d}_mask.png")
            binary = np.array(Image.open(work / f"{i:03d}_mask.png").convert("L")) > 0
            gt = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
        items.append({"img": model.preprocess(pil)[None], "img_mask": model.transform(gt)[None], "cls_name": [cls],
                      "anomaly": torch.tensor([int(mask is not None)]), "img_path": [str(path)]})  # fmt: skip
    return items


def _training_loss(model, item: dict) -> float:
    """The loss ``train_one_batch`` computes, read at its backward."""

    def backward(loss, *a, **k):
        raise _Stop(loss)

    original = torch.Tensor.backward
    torch.Tensor.backward = backward
    try:
        model.clip_model.train()  # as train_epoch
        model.train_one_batch({k: v.clone() if torch.is_tensor(v) else v for k, v in item.items()})
    except _Stop as stop:
        return float(stop.args[0].detach())
    finally:
        torch.Tensor.backward = original
        model.clip_model.eval()
    raise RuntimeError("train_one_batch finished without a backward")


def record_arch(source: Path, key: str) -> dict[str, np.ndarray]:
    """One architecture → fixture entries prefixed ``<key>/``."""
    arch = ARCHS[key]
    gen = april_gan_driver()
    rec = Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ref = work / "ref"
        materialise(source, ref)
        if arch.config:
            (ref / "model_configs" / f"{arch.model}.json").write_text(json.dumps(arch.config))
        cfg = json.loads((ref / "model_configs" / f"{arch.model}.json").read_text())
        rec.stubs()
        sys.path.insert(0, str(ref))
        try:
            from method.clip_model import CLIP

            with torch.device("meta"):
                shapes = {k: tuple(v.shape) for k, v in CLIP(**cfg).state_dict().items()}
            weights = gen.random_state_dict(shapes, gen.SEED)
            torch.save(weights, work / "weights.pt")
            model, checkpoint = _trainer(arch, cfg, work / "weights.pt", work)
            rec.observe(model)
            items = _items(model, arch, work)
            np.random.seed(KMEANS_SEED)  # noqa: NPY002 - KMeans(random_state=None) draws from the global generator
            with torch.no_grad():
                model.evaluation(items, sorted(set(arch.classes)), False)
                loss = _training_loss(model, items[TRAIN_IMAGE])
        finally:
            sys.path.remove(str(ref))
            for name in [m for m in sys.modules if m.split(".")[0] in ("method", "loss", "tools", "cv2")]:
                del sys.modules[name]
    maps = np.stack(rec.metric_results["anomaly_maps"]).astype(np.float32)  # (n, S, S)
    out = {
        "weights_digest": np.array(gen.tensor_digest(weights)),
        "keys_digest": np.array(keys_digest(shapes)),
        "learnable_digest": np.array(gen.tensor_digest(checkpoint)),
        "learnable_shapes": np.array(json.dumps({k: list(v.shape) for k, v in checkpoint.items()})),
        "scores": np.array(rec.metric_results["anomaly_scores"], np.float64),
        "text": np.stack([s[0] for s in rec.similarity[: len(maps)]]).astype(np.float32),  # (n, 2, E)
        "embed": np.stack([s[1] for s in rec.similarity[: len(maps)]]).astype(np.float32),  # (n, E)
        "cosines": np.stack([s[2] for s in rec.similarity[: len(maps)]]).astype(np.float32),  # (n, L, N, 2)
        "kmeans_labels": np.stack(rec.kmeans),  # the evaluation's, then the training step's
        "train_loss": np.array(loss),
        "train_gt": (items[TRAIN_IMAGE]["img_mask"][0, 0] > 0.5).numpy(),
    }
    if arch.size > 200:
        out["maps_sub"] = maps[:, ::SUB, ::SUB].copy()
        out[f"map{TRAIN_IMAGE}"] = maps[TRAIN_IMAGE]
    else:
        out["maps"] = maps
    return {f"{key}/{k}": v for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adaclip", type=Path, required=True, help="a checkout or bare git dir of caoyunkang/AdaCLIP")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS), help="default: all")
    parser.add_argument("--out", type=Path, default=HERE.parent / "fixtures" / "adaclip.npz")
    args = parser.parse_args()
    data = dict(np.load(args.out)) if args.out.is_file() else {}
    data = {k: v for k, v in data.items() if k.split("/")[0] in ARCHS}  # drop a recording of the old layout
    for key in args.arch or sorted(ARCHS):
        data = {k: v for k, v in data.items() if not k.startswith(f"{key}/")}
        data.update(record_arch(args.adaclip, key))
        data["commit"] = np.array(COMMIT)
        np.savez_compressed(args.out, **data)
        print(f"{key}: scores {data[f'{key}/scores']}, train loss {float(data[f'{key}/train_loss']):.6f}")


if __name__ == "__main__":
    main()
