"""The zero-shot guard: shared categories are refused unless overridden, and the override is recorded."""

from __future__ import annotations

import logging

import pytest

from zsad_bench.protocol import DataSelection, ProtocolError, check_protocol, resolve_aux_names
from zsad_bench.registry import DATASETS
from zsad_bench.types import DatasetInfo


def info(name, cats, overlaps=()):
    return DatasetInfo(name=name, domain="medical", modality="endoscopy", categories=tuple(cats), overlaps=overlaps)


CLINIC = info("clinicdb", ["polyp"], overlaps=("colondb",))
COLON = info("colondb", ["colon"])
MVTEC = info("mvtec_ad", ["bottle", "toothbrush", "zipper"], overlaps=("real_iad",))
REAL = info("real_iad", ["toothbrush", "zipper", "usb"])
VISA = info("visa", ["candle", "pcb1"])
INFOS = {i.name: i for i in (CLINIC, COLON, MVTEC, REAL, VISA)}


def sel(i, cats=None, split="test"):
    return DataSelection(i.name, tuple(cats or i.categories), split)


def test_disjoint_pairing_passes_and_is_zero_shot():
    record = check_protocol([sel(VISA)], sel(MVTEC), INFOS)
    assert record.zero_shot
    assert not record.overridden
    assert record.to_dict()["zero_shot"] is True


def test_same_dataset_same_category_is_refused_with_a_clear_message():
    with pytest.raises(ProtocolError) as err:
        check_protocol([sel(MVTEC, ["bottle"])], sel(MVTEC), INFOS)
    msg = str(err.value)
    assert "mvtec_ad/bottle ~ mvtec_ad/bottle" in msg
    assert "train.allow_overlap=true" in msg
    assert "train.aux" in msg


def test_same_dataset_other_categories_is_allowed():
    assert check_protocol([sel(MVTEC, ["bottle"])], sel(MVTEC, ["zipper"]), INFOS).zero_shot


def test_declared_overlap_of_single_category_datasets_is_refused():
    """ClinicDB and ColonDB are both colon polyps (AdaCLIP §5.1): declared, different category names."""
    with pytest.raises(ProtocolError, match="colondb/colon ~ clinicdb/polyp"):
        check_protocol([sel(COLON)], sel(CLINIC), INFOS)
    with pytest.raises(ProtocolError):  # either direction
        check_protocol([sel(CLINIC)], sel(COLON), INFOS)


def test_declared_overlap_of_multi_category_datasets_matches_names():
    with pytest.raises(ProtocolError) as err:
        check_protocol([sel(REAL)], sel(MVTEC), INFOS)
    assert "share 2 category pair(s): real_iad/toothbrush ~ mvtec_ad/toothbrush; real_iad/zipper" in str(err.value)
    assert "real_iad/usb ~" not in str(err.value)
    assert check_protocol([sel(REAL, ["usb"])], sel(MVTEC), INFOS).zero_shot


def test_category_scoped_and_wildcard_declarations():
    a = info("a", ["x", "y"], overlaps=("b/q",))
    b = info("b", ["p", "q"])
    infos = {"a": a, "b": b}
    record = check_protocol([sel(a)], sel(b), infos, allow_overlap=True)
    assert sorted(record.conflicts) == ["a/x ~ b/q", "a/y ~ b/q"]
    star = info("a", ["x"], overlaps=("b/*",))
    assert len(check_protocol([sel(star)], sel(b), {"a": star, "b": b}, allow_overlap=True).conflicts) == 2


def test_override_is_recorded(caplog):
    with caplog.at_level(logging.WARNING):
        record = check_protocol([sel(COLON)], sel(CLINIC), INFOS, allow_overlap=True)
    assert record.overridden
    assert not record.zero_shot
    d = record.to_dict()
    assert d["overridden"] is True
    assert d["allow_overlap"] is True
    assert d["zero_shot"] is False
    assert d["conflicts"] == ["colondb/colon ~ clinicdb/polyp"]
    assert "overridden" in caplog.text


def test_same_name_in_undeclared_datasets_is_only_recorded(caplog):
    other = info("other", ["bottle"])
    with caplog.at_level(logging.WARNING):
        record = check_protocol([sel(other)], sel(MVTEC), {**INFOS, "other": other})
    assert record.zero_shot
    assert record.name_matches == ["other/bottle ~ mvtec_ad/bottle"]
    assert "same name" in caplog.text


def test_several_aux_datasets_are_all_checked():
    with pytest.raises(ProtocolError, match="colondb"):
        check_protocol([sel(VISA), sel(COLON)], sel(CLINIC), INFOS)


def test_unknown_dataset_info_is_a_key_error():
    with pytest.raises(KeyError, match="nope"):
        check_protocol([DataSelection("nope", ("x",))], sel(VISA), INFOS)


def test_resolve_aux_names():
    assert resolve_aux_names("auto", "mvtec_ad", dataset_aux="visa") == ["visa"]
    assert resolve_aux_names("auto", "mvtec_ad", dataset_aux=None, default_aux="visa") == ["visa"]
    assert resolve_aux_names(None, "x", dataset_aux="mvtec_ad+clinicdb") == ["mvtec_ad", "clinicdb"]
    assert resolve_aux_names(["visa", "visa", "colondb"], "x") == ["visa", "colondb"]
    with pytest.raises(ValueError, match=r"conf/dataset/lonely\.yaml"):
        resolve_aux_names("auto", "lonely")


def test_registered_synth_pair_respects_the_protocol():
    synth, aux = DATASETS.get("synth").info(), DATASETS.get("synth_aux").info()
    infos = {"synth": synth, "synth_aux": aux}
    assert check_protocol([sel(aux)], sel(synth), infos).zero_shot
    assert synth.default_aux == "synth_aux"
    with pytest.raises(ProtocolError):
        check_protocol([sel(synth, ["pill_like"])], sel(synth), infos)
