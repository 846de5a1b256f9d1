"""Weight resolution: files, local cache, offline errors within a second, safe checkpoint loading."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
import torch

from zsad_bench.backbones import WeightsUnavailableError, build_backbone
from zsad_bench.backbones.weights import load_state_dict, offline_reason, source_for
from zsad_bench.commands.weights import main as weights_main

TINY = ("tiny_clip", "tiny_dinov2", "tiny_sam")
POS_KEYS = ("visual.positional_embedding", "pos_embed")


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbones_load_a_checkpoint_file_through_resolution(name, checkpoints):
    path, saved = checkpoints[name]
    bb = build_backbone({"name": name, "weights": str(path)})
    assert bb.weights.source == "file"
    assert not bb.random_weights
    assert bb.weights_fingerprint == f"sha256:{_sha(path)[:16]}"
    state = bb.model.state_dict()
    for key, value in saved.items():
        if key in POS_KEYS and state[key].shape != value.shape:
            continue  # resized to input_size (tested separately)
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    random = build_backbone({"name": name, "weights": "random"}).model.state_dict()
    assert any(not torch.equal(random[k], v) for k, v in saved.items() if k in random and random[k].shape == v.shape)


@pytest.mark.parametrize("name", TINY)
def test_pretrained_tag_is_found_in_the_local_weights_root(name, checkpoints, weights_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, _ = checkpoints[name]
    bb = build_backbone({"name": name, "weights": "pretrained", "weights_root": str(weights_root)})
    assert bb.weights.source == "cache"
    assert bb.weights.path == path
    assert bb.weights_fingerprint == f"sha256:{_sha(path)[:16]}"


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    a = build_backbone({"name": "tiny_dinov2", "seed": 1})
    sa = a.model.state_dict()
    after = torch.rand(3)
    assert torch.equal(before, after)
    sb = build_backbone({"name": "tiny_dinov2", "seed": 1}).model.state_dict()
    sc = build_backbone({"name": "tiny_dinov2", "seed": 2}).model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    fps = {build_backbone({"name": "tiny_dinov2", "seed": s}).weights_fingerprint for s in (1, 1, 2)}
    assert len(fps) == 2
    assert all(f.startswith("random:") for f in fps)


def _assert_one_line_error(exc: BaseException, root, key: str):
    msg = str(exc)
    assert "\n" not in msg
    assert str(root / key) in msg
    assert "backbone.weights" in msg


def test_offline_env_fails_within_a_second_naming_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone({"name": "clip_vit_l14_336", "weights_root": str(tmp_path)})
    assert time.perf_counter() - t < 1.0
    _assert_one_line_error(err.value, tmp_path, "clip_vit_l14_336.openai")
    assert "open_clip_model.safetensors" in str(err.value)
    assert "HF_HUB_OFFLINE=1" in str(err.value)


@pytest.mark.parametrize("mode", ["refused", "hanging"])
def test_blocked_network_fails_within_a_second(mode, tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "ZSAD_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def refused(*args, **kwargs):
        raise ConnectionRefusedError("blocked by the test")

    def hanging(*args, **kwargs):
        time.sleep(5)  # a dead DNS server / black-holed route
        raise TimeoutError

    monkeypatch.setattr(socket, "create_connection", refused if mode == "refused" else hanging)
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone({"name": "dinov2_vits14", "weights_root": str(tmp_path)})
    assert time.perf_counter() - t < 1.0
    _assert_one_line_error(err.value, tmp_path, "dinov2_vits14.lvd142m")


def test_offline_reason_reads_the_environment(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # nox and CI set it
    monkeypatch.setenv("ZSAD_OFFLINE", "1")
    assert offline_reason() == "ZSAD_OFFLINE=1"


def test_local_only_weights_and_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="no download source"):
        build_backbone({"name": "tiny_clip", "weights": "pretrained", "weights_root": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"does not exist; fix backbone\.weights"):
        build_backbone({"name": "tiny_clip", "weights": str(tmp_path / "nope.safetensors")})


def test_a_checkpoint_of_another_architecture_is_refused(checkpoints):
    path, _ = checkpoints["tiny_sam"]
    bb = build_backbone({"name": "tiny_dinov2", "weights": str(path)})
    with pytest.raises(ValueError, match="does not fit backbone tiny_dinov2"):
        bb.model  # noqa: B018


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_load_state_dict_formats(tmp_path):
    sd = {"w": torch.arange(4.0), "b": torch.ones(2)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "a.pt")
    assert set(load_state_dict(tmp_path / "a.pt")) == {"w", "b"}
    lin = torch.jit.script(torch.nn.Linear(2, 3))
    lin.save(str(tmp_path / "jit.pt"))
    assert set(load_state_dict(tmp_path / "jit.pt")) == {"weight", "bias"}


class Evil:
    def __reduce__(self):
        return (print, ("pickle executed",))


def test_load_state_dict_refuses_arbitrary_pickles(tmp_path):
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict(tmp_path / "evil.pt")


def test_unknown_tags_derive_from_open_clip_without_network():
    src = source_for("clip", "ViT-B-32", "laion2b_s34b_b79k")
    assert src.hub_repo == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    assert src.key == "ViT-B-32.laion2b_s34b_b79k"
    with pytest.raises(KeyError, match="no weights source"):
        source_for("clip", "ViT-B-32", "no_such_tag")


def test_weights_command(tmp_path, weights_root, capsys):
    assert weights_main(["list", "--root", str(weights_root)]) == 0
    assert weights_main(["check", "tiny_clip", "tiny_sam", "--root", str(weights_root)]) == 0
    assert weights_main(["check", "dinov2_vits14", "--root", str(tmp_path)]) == 1
    folder = tmp_path / "clip_vit_b16_plus_240.laion400m_e31"
    folder.mkdir()
    (folder / "vit_b_16_plus_240-laion400m_e31-8fb26589.pt").write_bytes(b"not the weights")
    assert weights_main(["check", "clip_vit_b16_plus_240.laion400m_e31", "--root", str(tmp_path)]) == 1
    assert weights_main(["path", "clip_vit_l14_336", "--root", str(tmp_path)]) == 0
    assert weights_main(["path", "nonsense"]) == 2
    out = capsys.readouterr().out
    assert "missing" in out
    assert "bad" in out
    assert "clip_vit_l14_336.openai" in out
