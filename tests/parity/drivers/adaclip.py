"""Record the official AdaCLIP code on seeded random CLIP ViT-B/16 weights (the AdaCLIP parity fixture).

The official ``method/adaclip.py`` (caoyunkang/AdaCLIP @ e27ee32b, MIT) and the vendored CLIP it
needs (``clip_model.py``, ``transformer.py``, ``utils.py``, ``simple_tokenizer.py``) and ``loss.py``
are read from a fetched copy at run time into a temporary package; nothing of them is stored in
this repository. Spec §11: ``pkg_resources`` is replaced by a stub, the repository's BPE vocabulary
(a Git LFS pointer) by open_clip's identical file (sha256 checked), and the OpenAI download by
seeded random weights built with the code's own ``CLIP`` class. Usage::

    python tests/parity/drivers/adaclip.py --adaclip /work/.mirror/caoyunkang+AdaCLIP/repo \
        --out tests/parity/fixtures/adaclip.npz

``--adaclip`` is a checkout or a bare git directory (read with ``git show <commit>:<path>``).

Recorded, per image (batch size 1, the only one the code supports; CPU, fp32): the Gaussian-smoothed
anomaly map and the image score of ``AdaCLIP.forward(aggregation=True)``, the k-means labels the
code drew (``random_state=None``), and for one anomalous image the training loss of
``AdaCLIP_Trainer.train_one_batch`` (focal + per-layer focal + dice + dice, computed here with the
code's ``loss.py``; the code's backward fails in fp32 on CPU, so only the value). The learnable
parameters' values come from :func:`learnable_values`, seeded by the code's parameter names; the
fixture keeps the names and shapes. :func:`make_images`, :func:`random_state_dict` and :func:`learnable_values` are
imported by ``tests/parity/test_adaclip.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import types
import zlib
from pathlib import Path

import numpy as np
import torch

ADACLIP_COMMIT = "e27ee32b"
FILES = ["method/adaclip.py", "method/clip_model.py", "method/transformer.py", "method/utils.py"]
FILES += ["method/simple_tokenizer.py", "loss.py", "model_configs/ViT-B-16.json"]
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
SEED = 20240715
SIZE = 224  # ViT-B/16 at 224: 14x14 patches; layers 3, 6, 9, 12 (n_layers // 4 multiples, train.py)
LAYERS = [3, 6, 9, 12]
CLASS_NAMES = ["metal_nut", "bottle", "pipe-fryum"]  # "-" becomes a space in the prompts
LEARNABLE = (  # AdaCLIP_Trainer.learnable_paramter_list
    "text_prompter.",
    "visual_prompter.",
    "patch_token_layer.",
    "cls_token_layer.",
    "dynamic_visual_prompt_generator.",
    "dynamic_text_prompt_generator.",
)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- shared inputs
def make_images(n: int, seed: int = SEED) -> np.ndarray:
    """(n, SIZE, SIZE, 3) uint8: smooth random colour fields, each with a bright rectangle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = []
    for k in range(n):
        img = np.stack([0.5 + 0.3 * np.sin(rng.uniform(2, 9) * xx * 6.3 + rng.uniform(0, 6.3)) for _ in range(3)], -1)
        img = img * np.cos(rng.uniform(2, 9) * yy * 6.3)[..., None] * 0.5 + 0.4 + rng.normal(0, 0.04, img.shape)
        r0, c0 = 30 + 40 * k, 60 + 25 * k
        img[r0 : r0 + 40, c0 : c0 + 30] = [0.95, 0.85, 0.1]
        out.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return np.stack(out)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, S, S, 3) → normalised (n, 3, S, S) float32 (already at the input size)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded CLIP weights per state-dict name (fan-in scaled, LayerNorm gains near 1)."""
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed + zlib.crc32(name.encode())))
        leaf = name.rsplit(".", 1)[-1]
        if name == "logit_scale":
            out[name] = torch.tensor(float(np.log(100.0)))
        elif ".ln" in f".{name}" and leaf == "weight":  # LayerNorm gains (ln_pre, ln_1, ln_2, ln_post, ln_final)
            out[name] = 1.0 + 0.1 * noise
        elif leaf in ("bias", "in_proj_bias"):
            out[name] = 0.02 * noise
        elif name in ("visual.proj", "text_projection"):
            out[name] = noise / shape[0] ** 0.5
        elif len(shape) >= 2 and "positional_embedding" not in name and "token_embedding" not in name:
            out[name] = noise / int(np.prod(shape[1:])) ** 0.5
        else:  # embeddings, class token
            out[name] = 0.1 * noise
    return out


def learnable_values(shapes: dict[str, tuple[int, ...]], seed: int = SEED + 1) -> dict[str, torch.Tensor]:
    """Seeded values of the learnable parts, by the code's names (prompts large enough to matter)."""
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


def keys_digest(shapes: dict[str, tuple[int, ...]]) -> str:
    """Digest of the names and shapes (the code's CLIP and open_clip's must agree)."""
    return hashlib.sha256("\n".join(f"{k}:{shapes[k]}" for k in sorted(shapes)).encode()).hexdigest()[:16]


def mask_of(k: int) -> np.ndarray:
    """The ground truth of image ``k``: its bright rectangle."""
    m = np.zeros((SIZE, SIZE), np.float32)
    r0, c0 = 30 + 40 * k, 60 + 25 * k
    m[r0 : r0 + 40, c0 : c0 + 30] = 1.0
    return m


# ----------------------------------------------------------------------------- the reference
def _read(source: Path, path: str) -> bytes:
    if (source / path).is_file():
        return (source / path).read_bytes()
    return subprocess.run(["git", "-C", str(source), "show", f"{ADACLIP_COMMIT}:{path}"], capture_output=True,
                          check=True).stdout  # fmt: skip


def materialise(source: Path, root: Path) -> None:
    """Write the official files into ``root/adaclip_ref`` and make it importable."""
    import open_clip

    pkg = root / "adaclip_ref"
    (pkg / "method").mkdir(parents=True)
    for f in FILES:
        (pkg / f).parent.mkdir(parents=True, exist_ok=True)
        (pkg / f).write_bytes(_read(source, f))
    (pkg / "__init__.py").write_text("")
    (pkg / "method" / "__init__.py").write_text("")  # the real one imports the trainer (cv2, tensorboard …)
    vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if hashlib.sha256(vocab.read_bytes()).hexdigest() != VOCAB_SHA256:
        raise SystemExit(f"{vocab} is not the BPE vocabulary of the reference (sha256 differs)")
    (pkg / "method" / "bpe_simple_vocab_16e6.txt.gz").write_bytes(vocab.read_bytes())
    stub = types.ModuleType("pkg_resources")  # imported, unused numerically
    import packaging.version

    stub.packaging = types.SimpleNamespace(version=packaging.version)
    sys.modules["pkg_resources"] = stub
    sys.path.insert(0, str(root))


def build(root: Path):
    """The official AdaCLIP on seeded random ViT-B/16 weights and seeded learnable parts."""
    from adaclip_ref.method.adaclip import AdaCLIP
    from adaclip_ref.method.clip_model import CLIP

    cfg = json.loads((root / "adaclip_ref" / "model_configs" / "ViT-B-16.json").read_text())
    cfg["vision_cfg"]["image_size"] = SIZE
    torch.manual_seed(SEED)
    clip = CLIP(**cfg)  # GELU: the config has no quick_gelu, as in the code's create_model
    shapes = {k: tuple(v.shape) for k, v in clip.state_dict().items()}
    clip.load_state_dict(random_state_dict(shapes))
    clip.eval()
    model = AdaCLIP(freeze_clip=clip, text_channel=512, visual_channel=768, prompting_length=5, prompting_depth=4,
                    prompting_branch="VL", prompting_type="SD", use_hsf=True, k_clusters=20, output_layers=LAYERS,
                    device="cpu", image_size=SIZE)  # fmt: skip
    params = {name: p for name, p in model.named_parameters() if name.startswith(LEARNABLE)}
    with torch.no_grad():
        for name, value in learnable_values({k: tuple(p.shape) for k, p in params.items()}).items():
            params[name].copy_(value)
    return model, {k: tuple(p.shape) for k, p in params.items()}, keys_digest(shapes)


def record_kmeans(model) -> list[np.ndarray]:
    """Wrap the HSF's ``KMeans.fit_predict`` to keep the labels it returns."""
    calls: list[np.ndarray] = []
    performer = model.HSF.cluster_performer
    original = performer.fit_predict

    def fit_predict(data, *a, **kw):
        labels = original(data, *a, **kw)
        calls.append(np.asarray(labels).copy())
        return labels

    performer.fit_predict = fit_predict
    return calls


def run(source: Path, out: Path) -> None:
    """Run the reference and write the fixture."""
    from scipy.ndimage import gaussian_filter

    with tempfile.TemporaryDirectory() as tmp:
        materialise(source, Path(tmp))
        from adaclip_ref.loss import BinaryDiceLoss, FocalLoss

        model, learnable, digest = build(Path(tmp))
        labels = record_kmeans(model)
        np.random.seed(SEED)  # noqa: NPY002 - KMeans(random_state=None) draws from the global generator
        images = make_images(len(CLASS_NAMES))
        x = to_tensor(images)
        maps, scores = [], []
        with torch.no_grad():
            for k, name in enumerate(CLASS_NAMES):
                amap, score = model(x[k : k + 1], [name], aggregation=True)
                maps.append(gaussian_filter(amap[0].float().numpy(), sigma=4))  # trainer.py evaluation
                scores.append(float(score[0]))
        # one training loss as train_one_batch computes it (image 0, anomalous, batch size 1). Only its
        # value: in fp32 on CPU the code's backward fails (in-place divisions of tensors autograd saved;
        # on GPU, autocast's fp16 copies hide them)
        model.train()
        with torch.no_grad():
            layer_maps, image_probs = model(x[:1], [CLASS_NAMES[0]], aggregation=False)
            gt = torch.from_numpy(mask_of(0))[None, None].squeeze()  # (H, W), as the code's gt.squeeze()
            focal, dice = FocalLoss(), BinaryDiceLoss()
            loss = focal(image_probs, torch.tensor([1]).unsqueeze(1))
            for am in layer_maps:
                loss = loss + focal(am, gt) + dice(am[:, 1, :, :], gt) + dice(am[:, 0, :, :], 1 - gt)
    np.savez_compressed(
        out,
        images=images,
        class_names=np.array(CLASS_NAMES),
        maps=np.stack(maps).astype(np.float32),
        scores=np.array(scores, np.float64),
        kmeans_labels=np.stack(labels[: len(CLASS_NAMES) + 1]),
        train_loss=np.array(float(loss)),
        keys_digest=np.array(digest),
        commit=np.array(ADACLIP_COMMIT),
        learnable_shapes=np.array(json.dumps(learnable)),
    )
    print(f"wrote {out}: scores {np.round(scores, 5).tolist()}, train loss {float(loss):.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adaclip", type=Path, required=True, help="a checkout or bare git dir of caoyunkang/AdaCLIP")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "fixtures" / "adaclip.npz")
    args = parser.parse_args()
    run(args.adaclip, args.out)


if __name__ == "__main__":
    main()
