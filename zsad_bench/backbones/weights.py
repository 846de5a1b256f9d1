"""Weight resolution that works offline: explicit file → local cache → hub download.

The manifest names, for every backbone and weights tag, where the weights come from
(Hugging Face hub repository and files, or a URL), the expected sha256 where it is
known, and the licence. Resolution never waits on a dead network: with
``HF_HUB_OFFLINE=1`` (or ``ZSAD_OFFLINE=1``) or when a 0.5 s connection probe fails,
it raises :class:`WeightsUnavailableError` at once, with one line that names the file
and the folder to put it in. Checkpoints load with safetensors or
``torch.load(weights_only=True)``; OpenAI's TorchScript archives go through
``torch.jit.load`` (no Python pickle), never an unrestricted pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zsad_bench.backbones.manifest import MANIFEST, WeightsSource

if TYPE_CHECKING:
    import torch

    from zsad_bench.backbones.config import BackboneConfig

__all__ = [
    "ResolvedWeights",
    "WeightsUnavailableError",
    "file_sha256",
    "find_local",
    "load_state_dict",
    "offline_reason",
    "resolve_weights",
    "source_for",
    "weights_root",
]

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 0.5
_TRUE = ("1", "true", "yes", "on")
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


class WeightsUnavailableError(FileNotFoundError):
    """The weights are neither on disk nor downloadable now; the message says where to put them."""


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights come from.

    Attributes:
        path: the checkpoint file, or None for random weights.
        random: True for seeded random weights.
        fingerprint: ``sha256:<16 hex>`` of the file, or ``random:<16 hex>`` of the recipe.
        source: ``file`` (explicit path), ``cache`` (found locally), ``hub``/``url`` (downloaded), ``random``.
    """

    path: Path | None
    random: bool
    fingerprint: str
    source: str


def weights_root(configured: str | os.PathLike[str] | None = None) -> Path:
    """The local weights folder: the configured one, else ``$ZSAD_WEIGHTS``, else ``./weights``.

    The defaults are those of ``conf/paths/default.yaml`` (``paths.weights_root``).
    """
    return Path(configured or os.environ.get("ZSAD_WEIGHTS") or "weights").expanduser().absolute()


def source_for(name: str, arch: str, tag: str) -> WeightsSource:
    """The manifest entry of ``name.tag``, else one derived from open_clip's registry for ``arch``/``tag``.

    Raises:
        KeyError: when neither knows the tag.
    """
    key = f"{name}.{tag}"
    if key in MANIFEST:
        return MANIFEST[key]
    derived = _open_clip_source(arch, tag)
    if derived is not None:
        return derived
    known = sorted(k for k in MANIFEST if k.startswith(f"{name}."))
    raise KeyError(f"no weights source for {key!r} (arch {arch!r}); known tags: {known or 'none'}")


def _open_clip_source(arch: str, tag: str) -> WeightsSource | None:
    if not arch or not tag:
        return None
    try:
        import open_clip
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return None
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        return None
    repo, _, file = _split_hub(cfg.get("hf_hub", ""))
    return WeightsSource(
        backbone=arch,
        tag=tag,
        hub_repo=repo,
        hub_files=(file,) if file else ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
        url=cfg.get("url", ""),
        notes="derived from open_clip's pretrained registry",
    )


def _split_hub(hub: str) -> tuple[str, str, str]:
    """``org/repo/file`` → (``org/repo``, ``/``, ``file``); ``org/repo/`` → (``org/repo``, ``/``, ``""``)."""
    parts = hub.split("/")
    if len(parts) < 2:
        return "", "", ""
    return "/".join(parts[:2]), "/", "/".join(parts[2:])


def find_local(source: WeightsSource, root: Path) -> Path | None:
    """The first accepted file of ``source`` under ``root/<name.tag>/``, or in the HF cache, or None."""
    folder = root / source.key
    for file in source.files:
        if (folder / file).is_file():
            return folder / file
    return _hf_cached(source)


def _hf_cached(source: WeightsSource) -> Path | None:
    if not source.hub_repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for file in source.hub_files:
        hit = try_to_load_from_cache(source.hub_repo, file)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def offline_reason(host: str = "huggingface.co", timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why downloads are impossible now, or None. Never takes much longer than ``timeout``."""
    for var in ("HF_HUB_OFFLINE", "ZSAD_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}=1"
    result: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(None)
        except OSError as exc:
            result.append(f"cannot reach {host} ({type(exc).__name__})")

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo itself can hang: bound it
    thread.start()
    thread.join(timeout)
    if not result:
        return f"no answer from {host} within {timeout:.1f} s"
    return result[0]


def resolve_weights(cfg: BackboneConfig, recipe: str = "") -> ResolvedWeights:
    """Resolve ``cfg.weights``: ``random``, an explicit file, or the tag via local cache then hub.

    Args:
        cfg: the backbone configuration.
        recipe: for random weights, a description of what is initialised (part of the fingerprint).

    Raises:
        FileNotFoundError: an explicit file is missing.
        WeightsUnavailableError: the tag's file is not local and cannot be downloaded now.
    """
    if cfg.random:
        digest = hashlib.sha256(f"{recipe}|seed={cfg.seed}".encode()).hexdigest()[:16]
        logger.warning("backbone %s uses RANDOM weights (seed %d); results are marked as such", cfg.name, cfg.seed)
        return ResolvedWeights(None, True, f"random:{digest}", "random")
    if cfg.weights != "pretrained":
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone {cfg.name}: weights file {path} does not exist; fix backbone.weights "
                "(pretrained | random | /path/to/checkpoint)"
            )
        return ResolvedWeights(path, False, f"sha256:{file_sha256(path)[:16]}", "file")
    source = source_for(cfg.name, cfg.arch, cfg.pretrained)
    root = weights_root(cfg.weights_root)
    local = find_local(source, root)
    if local is not None:
        return ResolvedWeights(local, False, f"sha256:{file_sha256(local)[:16]}", "cache")
    path, how = _download(source, root)
    return ResolvedWeights(path, False, f"sha256:{file_sha256(path)[:16]}", how)


def _where(source: WeightsSource, root: Path) -> str:
    origin = source.url or (f"https://huggingface.co/{source.hub_repo}" if source.hub_repo else "")
    get = f" (from {origin})" if origin else ""
    return f"put {source.files[0]}{get} into {root / source.key}/ or set backbone.weights=/path/to/file"


def _download(source: WeightsSource, root: Path) -> tuple[Path, str]:
    if not source.hub_repo and not source.url:
        raise WeightsUnavailableError(
            f"weights {source.key} have no download source ({source.notes or 'local only'}): {_where(source, root)}"
        )
    host = urllib.parse.urlparse(source.url).hostname if not source.hub_repo else "huggingface.co"
    reason = offline_reason(host or "huggingface.co")
    if reason is not None:
        raise WeightsUnavailableError(
            f"weights {source.key} not found locally and offline ({reason}): {_where(source, root)}"
        )
    folder = root / source.key
    folder.mkdir(parents=True, exist_ok=True)
    if source.hub_repo:
        path = _download_hub(source, folder)
        if path is not None:
            return path, "hub"
    if source.url:
        return _download_url(source, folder), "url"
    raise WeightsUnavailableError(
        f"weights {source.key}: none of {source.hub_files} on the hub; {_where(source, root)}"
    )


def _download_hub(source: WeightsSource, folder: Path) -> Path | None:
    from huggingface_hub import hf_hub_download

    for file in source.hub_files:
        try:
            logger.info("downloading %s/%s into %s", source.hub_repo, file, folder)
            return Path(hf_hub_download(source.hub_repo, file, local_dir=folder))
        except Exception as exc:  # try the next accepted file name
            logger.info("hub file %s/%s unavailable: %s", source.hub_repo, file, exc)
    return None


def _download_url(source: WeightsSource, folder: Path) -> Path:
    import urllib.request

    target = folder / Path(urllib.parse.urlparse(source.url).path).name
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    logger.info("downloading %s into %s", source.url, folder)
    with urllib.request.urlopen(source.url, timeout=30) as response, tmp.open("wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    digest = file_sha256(tmp, memo=False)
    if source.sha256 and not digest.startswith(source.sha256):
        tmp.unlink(missing_ok=True)
        raise ValueError(f"downloaded {source.url} has sha256 {digest[:16]}…, expected {source.sha256[:16]}…")
    os.replace(tmp, target)
    return target


def file_sha256(path: Path, memo: bool = True) -> str:
    """The sha256 of a file, remembered per (path, size, mtime) and in a ``.sha256`` sidecar when writable."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo and key in _SHA_MEMO:
        return _SHA_MEMO[key]
    sidecar = path.with_name(path.name + ".sha256")
    if memo and sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text())
            if data.get("size") == stat.st_size and data.get("mtime_ns") == stat.st_mtime_ns:
                _SHA_MEMO[key] = data["sha256"]
                return data["sha256"]
        except (ValueError, KeyError, OSError):
            pass
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    if memo:
        _SHA_MEMO[key] = digest
        with contextlib.suppress(OSError):  # read-only folder: the in-memory memo is enough
            sidecar.write_text(json.dumps({"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    return digest


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint as a flat state dict without executing arbitrary pickles.

    ``.safetensors`` files use safetensors; other files ``torch.load(weights_only=True)``;
    TorchScript archives (OpenAI's ``.pt``) ``torch.jit.load``. Nested ``state_dict`` /
    ``model`` entries and a ``module.`` prefix are unwrapped.

    Raises:
        ValueError: naming the file when it is not a loadable checkpoint.
    """
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    if _is_torchscript(path):
        import warnings

        logger.info("loading TorchScript archive %s with torch.jit.load", path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"cannot load {path} with weights_only=True ({exc}); convert it to safetensors") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
