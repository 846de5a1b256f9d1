"""The generic registry: strictness, lookups, wildcards, cards."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from zsad_bench.registry import Registry


@dataclass(frozen=True)
class Card:
    name: str
    trainable: bool = False


def make() -> Registry:
    reg: Registry = Registry("thing", Card)
    reg._discovered = True  # no plugin package to import
    return reg


class Alpha:
    pass


class Beta:
    pass


def test_register_get_and_card():
    reg = make()
    reg.register("alpha", trainable=True)(Alpha)
    assert reg.get("alpha") is Alpha
    assert reg.card("alpha") == Card("alpha", True)
    assert reg.entry("alpha").origin.endswith(":Alpha")
    assert "alpha" in reg
    assert list(reg) == ["alpha"]


def test_duplicate_name_names_both_modules():
    reg = make()
    reg.register("alpha")(Alpha)
    with pytest.raises(ValueError, match=r"registered twice: by .*:Alpha and by .*:Beta"):
        reg.register("alpha")(Beta)


def test_reregistering_the_same_object_is_allowed():
    reg = make()
    reg.register("alpha")(Alpha)
    reg.register("alpha")(Alpha)
    assert len(reg) == 1


def test_unknown_name_lists_close_matches_and_all_names():
    reg = make()
    reg.register("winclip")(Alpha)
    reg.register("adaclip")(Beta)
    with pytest.raises(KeyError, match=r"unknown thing 'winclp'\. Did you mean winclip\? Available: adaclip, winclip"):
        reg.get("winclp")


def test_list_with_wildcards_and_card_filters():
    reg = make()
    for name in ("winclip", "adaclip", "dinov2_head"):
        reg.add(name, type(name, (), {}), trainable=name != "winclip")
    assert reg.list("*clip*") == ["adaclip", "winclip"]
    assert reg.list("*", exclude="ada*") == ["dinov2_head", "winclip"]
    assert reg.list(trainable=True) == ["adaclip", "dinov2_head"]


def test_unknown_card_field_and_bad_name_fail():
    reg = make()
    with pytest.raises(TypeError, match="unknown thing card field"):
        reg.register("alpha", colour="red")(Alpha)
    with pytest.raises(ValueError, match="invalid thing name"):
        reg.register("has space")
