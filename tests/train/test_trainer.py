"""The shared trainer on synth_aux → synth with a toy trainable method (no backbone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zsad_bench.checkpoints import load_meta, load_state
from zsad_bench.context import Context
from zsad_bench.protocol import ProtocolError
from zsad_bench.train import TrainingDiverged, TrainRecipe, fit_batches, train_or_load


def params(method):
    return {k: v.detach().clone() for k, v in method.learnable_state().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fresh(toy):
    method = toy()
    method.setup(Context(device="cpu", seed=0))
    return method


def test_training_lowers_the_loss_and_is_stored(toy, make_cfg):
    method = fresh(toy)
    before = params(method)
    record = train_or_load(method, make_cfg(), method.ctx)
    assert record.status == "trained"
    assert record.tag == "toy_seg.synth_aux"
    assert record.epochs == 3
    assert record.steps == 3 * 5  # 40 auxiliary test images (4 categories × 10), batch 8
    assert record.losses[-1] < record.losses[0]
    assert not same(before, params(method))
    assert record.protocol["zero_shot"] is True
    assert record.protocol["aux"][0]["dataset"] == "synth_aux"
    meta = load_meta(record.folder)
    assert meta["complete"] is True
    assert meta["epoch"] == 3
    assert meta["files"]["optim"] is None  # removed once complete
    assert meta["identity"]["recipe"]["lr"] == 0.05
    assert meta["protocol"]["zero_shot"] is True
    json.dumps(record.to_dict())  # JSON-ready for the result file


def test_stored_training_is_reused_by_tag_and_hash(toy, make_cfg):
    first = fresh(toy)
    a = train_or_load(first, make_cfg(), first.ctx)
    second = fresh(toy)
    b = train_or_load(second, make_cfg(), second.ctx)
    assert b.status == "loaded"
    assert b.folder == a.folder
    assert b.losses == a.losses
    assert same(params(first), params(second))
    third = fresh(toy)
    c = train_or_load(third, make_cfg(lr=0.01), third.ctx)  # another recipe: another hash, trains again
    assert c.status == "trained"
    assert c.config_hash != a.config_hash
    assert c.tag == a.tag


def test_progress_and_workers_do_not_change_the_hash(toy, make_cfg):
    a = fresh(toy)
    ra = train_or_load(a, make_cfg(max_steps=1, epochs=1), a.ctx)
    b = fresh(toy)
    rb = train_or_load(b, make_cfg(max_steps=1, epochs=1, progress=True, num_workers=0, amp=False), b.ctx)
    assert rb.status == "loaded"
    assert rb.config_hash == ra.config_hash


def test_weights_root_trained_folder_is_searched_first(toy, make_cfg, tmp_path):
    a = fresh(toy)
    record = train_or_load(a, make_cfg(checkpoint_dir=str(tmp_path / "weights" / "trained")), a.ctx)
    b = fresh(toy)
    again = train_or_load(b, make_cfg(), b.ctx)  # results_root has nothing: found under weights_root/trained
    assert again.status == "loaded"
    assert again.folder == record.folder


def test_interrupted_training_resumes_to_the_same_parameters(toy, make_cfg, tmp_path):
    straight = fresh(toy)
    train_or_load(straight, make_cfg(results=tmp_path / "a"), straight.ctx)

    broken = fresh(toy)
    broken.interrupt_at_call = 8  # epoch 2, step 3
    with pytest.raises(KeyboardInterrupt):
        train_or_load(broken, make_cfg(results=tmp_path / "b"), broken.ctx)
    folder = next((tmp_path / "b" / "checkpoints" / "toy_seg.synth_aux").iterdir())
    meta = load_meta(folder)
    assert meta["epoch"] == 1
    assert meta["complete"] is False
    assert (folder / meta["files"]["optim"]).is_file()

    resumed = fresh(toy)
    record = train_or_load(resumed, make_cfg(results=tmp_path / "b"), resumed.ctx)
    assert record.status == "resumed"
    assert record.resumed_from == 1
    assert record.steps == 2 * 5
    assert len(record.losses) == 3
    assert same(params(straight), params(resumed))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(toy, make_cfg):
    method = fresh(toy)
    method.nan_at_call = 7  # epoch 2
    with pytest.raises(TrainingDiverged) as err:
        train_or_load(method, make_cfg(), method.ctx)
    msg = str(err.value)
    assert "epoch 2/3, step 2" in msg
    assert "focal=nan" in msg
    assert "checkpoint of epoch 1 is kept" in msg
    assert "train.lr" in msg
    folder = next((Path(make_cfg().paths.results_root) / "checkpoints" / "toy_seg.synth_aux").iterdir())
    meta = load_meta(folder)
    assert meta["epoch"] == 1
    assert not meta["complete"]
    kept = load_state(folder / meta["files"]["model"])
    assert all(torch.isfinite(t).all() for t in kept.values())
    again = fresh(toy)  # the next call resumes from the kept epoch
    assert train_or_load(again, make_cfg(), again.ctx).resumed_from == 1


def test_nan_in_the_first_epoch_says_no_checkpoint(toy, make_cfg):
    method = fresh(toy)
    method.nan_at_call = 1
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        train_or_load(method, make_cfg(), method.ctx)


def test_protocol_guard_refuses_and_the_override_is_recorded(toy, make_cfg):
    method = fresh(toy)
    with pytest.raises(ProtocolError, match="synth/pill_like ~ synth/pill_like"):
        train_or_load(method, make_cfg(aux="synth", max_steps=1, epochs=1), method.ctx)
    record = train_or_load(method, make_cfg(aux="synth", allow_overlap=True, max_steps=1, epochs=1), method.ctx)
    assert record.protocol["overridden"] is True
    assert record.protocol["zero_shot"] is False
    assert record.tag == "toy_seg.synth"
    assert load_meta(record.folder)["protocol"]["overridden"] is True


def test_aux_auto_uses_the_dataset_pairing_and_explicit_lists(toy, make_cfg, data_root):
    method = fresh(toy)
    aux = [{"name": "synth_aux", "categories": ["tile_like"], "root": str(data_root / "synth_aux")}]
    record = train_or_load(method, make_cfg(aux=aux, epochs=1), method.ctx)
    assert record.protocol["aux"][0]["categories"] == ["tile_like"]
    assert record.steps == 2  # 10 images, batch 8


def test_method_fit_runs_the_shared_trainer(toy, make_cfg):
    method = fresh(toy)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 8, 8, generator=gen)
    masks = (images[:, 0] > 0.5).float()  # learnable: anomalous where the first channel is bright
    from zsad_bench.types import Batch

    batches = [
        Batch(images[i : i + 2], [], ["x", "x"], torch.zeros(2, dtype=torch.long), masks[i : i + 2]) for i in (0, 2)
    ]
    losses = fit_batches(method, batches, TrainRecipe(epochs=15, lr=0.05))
    assert losses[-1] < 0.7 * losses[0]
    method.fit(batches)  # the Method default: the same trainer with the method's recipe
    assert not method.head.training  # set back to inference mode


def test_decoded_images_are_kept_for_later_epochs_without_changing_the_result(toy, make_cfg, tmp_path, monkeypatch):
    from zsad_bench.preprocess import RecordDataset

    calls = []
    original = RecordDataset.__getitem__
    monkeypatch.setattr(RecordDataset, "__getitem__", lambda self, i: calls.append(i) or original(self, i))
    kept = fresh(toy)
    a = train_or_load(kept, make_cfg(results=tmp_path / "a"), kept.ctx)
    assert len(calls) == 40  # decoded once, reused by epochs 2 and 3
    calls.clear()
    decoded = fresh(toy)
    b = train_or_load(decoded, make_cfg(results=tmp_path / "b", keep_decoded_mb=0), decoded.ctx)
    assert len(calls) == 3 * 40
    assert a.losses == b.losses
    assert same(params(kept), params(decoded))


def test_stored_training_loads_without_the_auxiliary_data_on_disk(toy, make_cfg, tmp_path):
    first = fresh(toy)
    a = train_or_load(first, make_cfg(epochs=1), first.ctx)
    cfg = make_cfg(epochs=1)
    cfg.paths.data_root = str(tmp_path / "elsewhere")  # no synth_aux there
    second = fresh(toy)
    b = train_or_load(second, cfg, second.ctx)
    assert b.status == "loaded"
    assert b.folder == a.folder
    assert not (tmp_path / "elsewhere").exists()  # nothing listed, nothing generated
    assert load_meta(a.folder)["aux_records"]["count"] == 40
