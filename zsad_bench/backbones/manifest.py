"""The weights manifest: backbone.tag → where the weights come from, checksum, licence.

Facts come from open_clip 3.3.0 ``pretrained.py`` (hub repositories, URLs; OpenAI URLs
carry the file's full sha256, mlfoundations URLs its first 8 hex digits), the timm
model cards and the segment-anything README (see ``docs/backbones.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlparse

__all__ = ["MANIFEST", "WeightsSource"]

_OC_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_OPENAI = "https://openaipublic.azureedge.net/clip/models"
_MLF = "https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights"


@dataclass(frozen=True)
class WeightsSource:
    """Where one set of weights comes from.

    Attributes:
        backbone: the backbone name (or open_clip architecture for derived entries).
        tag: the weights tag.
        hub_repo: Hugging Face hub repository, "" when none.
        hub_files: accepted file names in the hub repository, preferred first.
        url: a direct download URL, "" when none.
        sha256: the URL file's sha256 or a prefix of it, "" when unknown.
        license: the weights' licence.
        notes: anything a user must know (quirks).
    """

    backbone: str
    tag: str
    hub_repo: str = ""
    hub_files: tuple[str, ...] = ()
    url: str = ""
    sha256: str = ""
    license: str = ""
    notes: str = ""

    @property
    def key(self) -> str:
        """``backbone.tag``, also the folder name under the weights root."""
        return f"{self.backbone}.{self.tag}"

    @property
    def url_file(self) -> str:
        """The file name of the URL download, "" without a URL."""
        return PurePosixPath(urlparse(self.url).path).name if self.url else ""

    @property
    def files(self) -> tuple[str, ...]:
        """Every accepted local file name, preferred first."""
        names = [*self.hub_files, self.url_file] if self.url_file else list(self.hub_files)
        return tuple(names) or ("model.safetensors",)


_LOCAL_ONLY = "tiny test configuration: the tests write its weights file; otherwise use weights=random"

_ENTRIES = [
    WeightsSource(
        "clip_vit_l14_336",
        "openai",
        hub_repo="timm/vit_large_patch14_clip_336.openai",
        hub_files=_OC_FILES,
        url=f"{_OPENAI}/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
        sha256="3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
        license="MIT (OpenAI CLIP)",
        notes="trained with QuickGELU; APRIL-GAN/AdaCLIP ran it with GELU (see docs/backbones.md)",
    ),
    WeightsSource(
        "clip_vit_b16_plus_240",
        "laion400m_e31",
        hub_repo="timm/vit_base_patch16_plus_clip_240.laion400m_e31",
        hub_files=_OC_FILES,
        url=f"{_MLF}/vit_b_16_plus_240-laion400m_e31-8fb26589.pt",
        sha256="8fb26589",
        license="MIT (open_clip, LAION-400M)",
    ),
    WeightsSource(
        "clip_vit_b16_plus_240",
        "laion400m_e32",
        url=f"{_MLF}/vit_b_16_plus_240-laion400m_e32-699c4b84.pt",
        sha256="699c4b84",
        license="MIT (open_clip, LAION-400M)",
        notes="URL only: open_clip>=2.29 maps this tag to the e31 hub repository (it silently yields e31)",
    ),
    WeightsSource(
        "clip_vit_b16",
        "openai",
        hub_repo="timm/vit_base_patch16_clip_224.openai",
        hub_files=_OC_FILES,
        url=f"{_OPENAI}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        license="MIT (OpenAI CLIP)",
        notes="trained with QuickGELU",
    ),
    WeightsSource(
        "clip_vit_b16",
        "laion400m_e32",
        hub_repo="timm/vit_base_patch16_clip_224.laion400m_e32",
        hub_files=_OC_FILES,
        url=f"{_MLF}/vit_b_16-laion400m_e32-55e67d44.pt",
        sha256="55e67d44",
        license="MIT (open_clip, LAION-400M)",
    ),
    WeightsSource(
        "dinov2_vits14",
        "lvd142m",
        hub_repo="timm/vit_small_patch14_dinov2.lvd142m",
        hub_files=("model.safetensors", "pytorch_model.bin"),
        license="Apache-2.0",
    ),
    WeightsSource(
        "sam_vit_l",
        "sa1b",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        license="Apache-2.0",
        notes="full SAM checkpoint; only image_encoder.* is used",
    ),
    WeightsSource("tiny_clip", "test", hub_files=("model.safetensors",), notes=_LOCAL_ONLY),
    WeightsSource("tiny_dinov2", "test", hub_files=("model.safetensors",), notes=_LOCAL_ONLY),
    WeightsSource("tiny_sam", "test", hub_files=("model.safetensors",), notes=_LOCAL_ONLY),
]

MANIFEST: dict[str, WeightsSource] = {e.key: e for e in _ENTRIES}
