"""The shared prompt lists (from the official codes' prompt files) and the sentence helpers."""

from __future__ import annotations

import doctest
import hashlib

import pytest

from zsad_bench import prompts as P

# sha256[:16] of "\n".join(list), computed after checking each list string-for-string against the
# references' own files (anomalib b7233686 prompting.py, caoyunkang/WinClip 0818c9d3 ad_prompts.py,
# VAND-APRIL-GAN prompt_ensemble.py, hq-deng/AnoVL prompt_ensemble.py). They guard against edits.
VERIFIED = {
    "winclip_normal_states": "3efc5bc5bb19d756",
    "winclip_anomalous_states": "502e5ffd35cb8e81",
    "winclip_templates_anomalib": "7371502007165a42",
    "winclip_templates_caoyunkang": "0bfa068b532e261f",
    "april_gan_abnormal_states": "9db1a9899a146025",
    "april_gan_templates": "b976c262921bee3e",
    "anoclip_normal_states": "de7e312c2ba37f13",
    "anoclip_anomalous_states": "1ef09d61509fd722",
}


def digest(items):
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(VERIFIED))
def test_lists_unchanged_since_verified(name):
    assert digest(P.prompt_list(name)) == VERIFIED[name]


def test_list_sizes_as_the_spec_says():
    assert (len(P.WINCLIP_NORMAL_STATES), len(P.WINCLIP_ANOMALOUS_STATES)) == (7, 4)
    assert len(P.WINCLIP_TEMPLATES_ANOMALIB) == 21
    assert len(P.WINCLIP_TEMPLATES_CAOYUNKANG) == 22
    assert (len(P.APRIL_GAN_ABNORMAL_STATES), len(P.APRIL_GAN_TEMPLATES)) == (5, 35)
    assert P.APRIL_GAN_TEMPLATES[:4] == P.ADACLIP_TEMPLATES
    assert (len(P.ANOCLIP_NORMAL_STATES), len(P.ANOCLIP_ANOMALOUS_STATES)) == (7, 7)


def test_anomalib_and_caoyunkang_templates_differ_as_documented():
    anomalib = [t.rstrip(".") for t in P.WINCLIP_TEMPLATES_ANOMALIB]
    assert all(t.endswith(".") for t in P.WINCLIP_TEMPLATES_ANOMALIB)
    assert not any(t.endswith(".") for t in P.WINCLIP_TEMPLATES_CAOYUNKANG)
    assert anomalib.count("a jpeg corrupted photo of the {}") == 2  # the duplicate is kept
    assert len(set(P.WINCLIP_TEMPLATES_CAOYUNKANG)) == 22
    missing = set(P.WINCLIP_TEMPLATES_CAOYUNKANG) - set(anomalib)
    assert missing == {"a cropped photo of a {}", "a jpeg corrupted photo of a {}"}


def test_every_list_formats_with_one_placeholder():
    for name, items in P.PROMPT_LISTS.items():
        for item in items:
            assert item.count("{}") == 1, (name, item)


def test_compose_orders():
    t, s = ["x {}.", "y {}."], ["{}", "bad {}", "{} with dent"]
    state_major = P.compose(t, s, "cup")
    assert state_major[:2] == ["x cup.", "y cup."]
    template_major = P.compose(t, s, "cup", order="template_major")
    assert template_major[:3] == ["x cup.", "x bad cup.", "x cup with dent."]
    assert sorted(state_major) == sorted(template_major)
    with pytest.raises(ValueError, match="order"):
        P.compose(t, s, "cup", order="random")


def test_winclip_ensemble_sizes_and_first_sentences():
    normal, anomalous = P.two_class_prompts(
        "metal_nut", P.WINCLIP_NORMAL_STATES, P.WINCLIP_ANOMALOUS_STATES, P.WINCLIP_TEMPLATES_ANOMALIB
    )
    assert (len(normal), len(anomalous)) == (147, 84)
    assert normal[21] == "a cropped photo of the flawless metal_nut."
    assert anomalous[-1] == "a photo of a metal_nut with damage for anomaly detection."


def test_fix_articles_only_touches_a_before_vowels():
    assert P.fix_articles("a photo of a anomalous bottle.") == "a photo of an anomalous bottle."
    assert P.fix_articles("A anomalous item, a bad one") == "An anomalous item, a bad one"
    assert P.fix_articles("a photo of a normal bottle.") == "a photo of a normal bottle."
    _, anomalous = P.two_class_prompts(
        "cup", P.CLIP_NORMAL_STATES, P.CLIP_ANOMALOUS_STATES, P.CLIP_TEMPLATES, articles=True
    )
    assert anomalous == ["a photo of an anomalous cup."]


def test_anoclip_domain_rule():
    inds = P.domain_templates("industrial photo")
    assert inds[0] == "a cropped industrial photo of the {}"
    assert inds[12] == "an industrial photo of a {}"
    assert P.domain_templates("manufacturing image")[12] == "a manufacturing image of a {}"
    assert P.domain_templates("surface picture")[-1] == "a surface picture of a {} for anomaly detection"
    assert all("photo" not in t for t in P.domain_templates("industrial image"))


def test_anoclip_templates_per_class_type():
    texture, obj = P.anoclip_templates("carpet"), P.anoclip_templates("bottle")
    assert len(texture) == len(obj) == 66
    assert any("textural photo" in t for t in texture)
    assert not any("textural" in t for t in obj)
    assert any("manufacturing image" in t for t in obj)
    assert not any("manufacturing" in t for t in texture)
    four = P.anoclip_templates("bottle", domains=P.ANOCLIP_DOMAIN_PHRASES[:4])
    assert len(four) == 88
    assert P.anoclip_class_name("macaroni2") == "macaroni"
    assert P.anoclip_class_name("pipe_fryum") == "pipe_fryum"


def test_unknown_list_names_the_known_ones():
    with pytest.raises(KeyError, match="winclip_templates_anomalib"):
        P.prompt_list("winclip_templates")


def test_doctests():
    result = doctest.testmod(P)
    assert result.attempted >= 4
    assert result.failed == 0


def test_the_adaptclip_papers_static_text_is_selectable():
    sentences = [
        P.compose(P.prompt_list("clip_templates"), P.prompt_list(states), "object")
        for states in ("clip_normal_states", "damaged_states")
    ]
    assert sentences == [["a photo of a normal object."], ["a photo of a damaged object."]]
