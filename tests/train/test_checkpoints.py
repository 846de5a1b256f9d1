"""Checkpoint files: exact round trip, atomic metadata, lookup by tag and hash, stale files removed."""

from __future__ import annotations

import json

import torch

from zsad_bench.checkpoints import CheckpointStore, config_hash, load_meta, load_state, save_state
from zsad_bench.context import Context
from zsad_bench.train import train_or_load


def test_safetensors_round_trip_is_exact_and_breaks_shared_storage(tmp_path):
    w = torch.randn(3, 4, dtype=torch.float64)
    state = {"a.weight": w, "b.weight": w, "half": torch.randn(5).half(), "t": w.T}  # shared and non-contiguous
    save_state(tmp_path / "s.safetensors", state, {"tag": "x"})
    back = load_state(tmp_path / "s.safetensors")
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k].contiguous()) and back[k].dtype == state[k].dtype for k in state)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_config_hash_ignores_key_order_and_sees_values():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_store_epochs_partial_then_complete(tmp_path):
    store = CheckpointStore("m.aux", "f" * 64, roots=[tmp_path / "w"], write_root=tmp_path / "r")
    state = {"w": torch.ones(2)}
    store.save_epoch(1, state, {"optimizer": {"x": torch.zeros(1)}}, {"losses": [1.0]})
    assert store.find_complete() is None
    partial = store.find_partial()
    assert partial["epoch"] == 1
    assert store.load_optim(store.write_folder, partial)["optimizer"]["x"].shape == (1,)
    store.save_epoch(2, {"w": torch.full((2,), 2.0)}, {"optimizer": {}}, {"losses": [1.0, 0.5]})
    assert sorted(p.name for p in store.write_folder.iterdir()) == [
        "epoch_002.optim.pt",
        "epoch_002.safetensors",
        "meta.json",
    ]  # epoch 1's files removed
    store.save_epoch(2, {"w": torch.full((2,), 2.0)}, None, {"losses": [1.0, 0.5]}, complete=True)
    folder, meta = store.find_complete()
    assert meta["complete"] is True
    assert meta["files"]["optim"] is None
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_002.safetensors", "meta.json"]
    assert torch.equal(store.load_model(folder, meta)["w"], torch.full((2,), 2.0))
    other = CheckpointStore("m.aux", "e" * 64, roots=[tmp_path / "w"], write_root=tmp_path / "r")
    assert other.find_complete() is None  # another config hash, another folder


def test_unreadable_meta_is_ignored(tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    assert load_meta(tmp_path) is None


def test_explicit_checkpoint_file_and_retrain(toy, make_cfg, tmp_path):
    first = toy()
    first.setup(Context(device="cpu", seed=0))
    record = train_or_load(first, make_cfg(epochs=1), first.ctx)
    meta = json.loads(
        (tmp_path / "results" / "checkpoints" / record.tag / record.config_hash[:16] / "meta.json").read_text()
    )
    weights = tmp_path / "results" / "checkpoints" / record.tag / record.config_hash[:16] / meta["files"]["model"]

    given = toy()
    given.setup(Context(device="cpu", seed=0))
    loaded = train_or_load(given, make_cfg(epochs=1, checkpoint=str(weights), results=tmp_path / "other"), given.ctx)
    assert loaded.status == "loaded"
    assert loaded.folder == str(weights)
    a, b = given.learnable_state(), first.learnable_state()
    assert all(torch.equal(a[k], b[k]) for k in b)

    again = toy()
    again.setup(Context(device="cpu", seed=0))
    assert train_or_load(again, make_cfg(epochs=1, retrain=True), again.ctx).status == "trained"
