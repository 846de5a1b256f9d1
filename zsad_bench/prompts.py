"""Hand-written prompt lists of the reference implementations, and helpers to build sentences.

The lists are data, reproduced verbatim from the references named on each constant
(spec ``reference-methods.md`` §1.4); order and duplicates are kept, because a duplicate
weighs twice in an averaged text embedding. A sentence is
``template.format(state.format(class_name))``.

Example:
    >>> normal, anomalous = two_class_prompts("bottle", WINCLIP_NORMAL_STATES, WINCLIP_ANOMALOUS_STATES,
    ...                                       WINCLIP_TEMPLATES_ANOMALIB)
    >>> len(normal), len(anomalous)
    (147, 84)
    >>> normal[0], anomalous[0]
    ('a cropped photo of the bottle.', 'a cropped photo of the damaged bottle.')
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

__all__ = [
    "ADACLIP_TEMPLATES",
    "ANOCLIP_ANOMALOUS_STATES",
    "ANOCLIP_BASE_TEMPLATES",
    "ANOCLIP_CLASS_NAMES",
    "ANOCLIP_DOMAIN_PHRASES",
    "ANOCLIP_NORMAL_STATES",
    "ANOCLIP_OBJECT_DOMAINS",
    "ANOCLIP_TEXTURE_CLASSES",
    "ANOCLIP_TEXTURE_DOMAINS",
    "APRIL_GAN_ABNORMAL_STATES",
    "APRIL_GAN_NORMAL_STATES",
    "APRIL_GAN_TEMPLATES",
    "CLIP_ANOMALOUS_STATES",
    "CLIP_NORMAL_STATES",
    "CLIP_TEMPLATES",
    "PROMPT_LISTS",
    "WINCLIP_ANOMALOUS_STATES",
    "WINCLIP_NORMAL_STATES",
    "WINCLIP_TEMPLATES_ANOMALIB",
    "WINCLIP_TEMPLATES_CAOYUNKANG",
    "anoclip_class_name",
    "anoclip_templates",
    "compose",
    "domain_templates",
    "fix_articles",
    "prompt_list",
    "two_class_prompts",
]

Order = Literal["state_major", "template_major"]

# ----------------------------------------------------------------------------- WinCLIP (§1.4 a)
# anomalib prompting.py NORMAL_STATES / ANOMALOUS_STATES; identical in caoyunkang/WinClip ad_prompts.py.
WINCLIP_NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
WINCLIP_ANOMALOUS_STATES: tuple[str, ...] = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
# anomalib prompting.py TEMPLATES: 21, trailing ".", "a jpeg corrupted photo of the {}." twice.
WINCLIP_TEMPLATES_ANOMALIB: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)
# caoyunkang/WinClip ad_prompts.py template_level_prompts (= AnoVL prompt_ensemble.py templates): 22, no ".".
WINCLIP_TEMPLATES_CAOYUNKANG: tuple[str, ...] = (
    "a cropped photo of the {}",
    "a cropped photo of a {}",
    "a close-up photo of a {}",
    "a close-up photo of the {}",
    "a bright photo of a {}",
    "a bright photo of the {}",
    "a dark photo of the {}",
    "a dark photo of a {}",
    "a jpeg corrupted photo of a {}",
    "a jpeg corrupted photo of the {}",
    "a blurry photo of the {}",
    "a blurry photo of a {}",
    "a photo of a {}",
    "a photo of the {}",
    "a photo of a small {}",
    "a photo of the small {}",
    "a photo of a large {}",
    "a photo of the large {}",
    "a photo of the {} for visual inspection",
    "a photo of a {} for visual inspection",
    "a photo of the {} for anomaly detection",
    "a photo of a {} for anomaly detection",
)

# ----------------------------------------------------------------------------- APRIL-GAN (§1.4 b)
# VAND-APRIL-GAN prompt_ensemble.py (also AnomalyCLIP prompt_ensemble.py, unused there).
APRIL_GAN_NORMAL_STATES: tuple[str, ...] = WINCLIP_NORMAL_STATES
APRIL_GAN_ABNORMAL_STATES: tuple[str, ...] = (
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
APRIL_GAN_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)
# AdaCLIP method/adaclip.py TextEmbebddingLayer: the first four APRIL-GAN templates.
ADACLIP_TEMPLATES: tuple[str, ...] = APRIL_GAN_TEMPLATES[:4]

# ----------------------------------------------------------------------------- AnoCLIP (§1.4 c)
# hq-deng/AnoVL prompt_ensemble.py state_normal / state_anomaly.
ANOCLIP_NORMAL_STATES: tuple[str, ...] = (
    "normal {}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOCLIP_ANOMALOUS_STATES: tuple[str, ...] = (
    "damaged {}",
    "abnormal {}",
    "imperfect {}",
    "blemished {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
ANOCLIP_BASE_TEMPLATES: tuple[str, ...] = WINCLIP_TEMPLATES_CAOYUNKANG
# The five phrases of the official code ("surface photo" is defined there and then overwritten).
ANOCLIP_DOMAIN_PHRASES: tuple[str, ...] = (
    "industrial photo",
    "industrial image",
    "manufacturing image",
    "textural photo",
    "surface picture",
)
ANOCLIP_TEXTURE_CLASSES: tuple[str, ...] = ("carpet", "leather", "grid", "tile", "wood")
ANOCLIP_TEXTURE_DOMAINS: tuple[str, ...] = ("industrial photo", "textural photo", "surface picture")
ANOCLIP_OBJECT_DOMAINS: tuple[str, ...] = ("industrial photo", "industrial image", "manufacturing image")
ANOCLIP_CLASS_NAMES: Mapping[str, str] = {"macaroni1": "macaroni", "macaroni2": "macaroni"}

# ----------------------------------------------------------------------------- plain CLIP baselines
# AnomalyCLIP's appendix (the source of the CLIP / CLIP-AC rows that KAnoCLIP's tables copy): "a photo of a
# normal [cls]" against "a photo of an anomalous [cls]"; CLIP-AC averages the same two classes over an
# ImageNet-style template ensemble (APRIL_GAN_TEMPLATES, the list AnomalyCLIP's repository carries).
CLIP_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
CLIP_NORMAL_STATES: tuple[str, ...] = ("normal {}",)
CLIP_ANOMALOUS_STATES: tuple[str, ...] = ("anomalous {}",)
# The AdaptCLIP paper's example static text, "a photo of a normal/damaged object" (with CLIP_TEMPLATES,
# CLIP_NORMAL_STATES and the class word "object"); AnomalyCLIP's anomalous sentence uses the same state.
DAMAGED_STATES: tuple[str, ...] = ("damaged {}",)

PROMPT_LISTS: Mapping[str, tuple[str, ...]] = {
    "winclip_normal_states": WINCLIP_NORMAL_STATES,
    "winclip_anomalous_states": WINCLIP_ANOMALOUS_STATES,
    "winclip_templates_anomalib": WINCLIP_TEMPLATES_ANOMALIB,
    "winclip_templates_caoyunkang": WINCLIP_TEMPLATES_CAOYUNKANG,
    "april_gan_normal_states": APRIL_GAN_NORMAL_STATES,
    "april_gan_abnormal_states": APRIL_GAN_ABNORMAL_STATES,
    "april_gan_templates": APRIL_GAN_TEMPLATES,
    "adaclip_templates": ADACLIP_TEMPLATES,
    "anoclip_normal_states": ANOCLIP_NORMAL_STATES,
    "anoclip_anomalous_states": ANOCLIP_ANOMALOUS_STATES,
    "anoclip_base_templates": ANOCLIP_BASE_TEMPLATES,
    "clip_templates": CLIP_TEMPLATES,
    "clip_normal_states": CLIP_NORMAL_STATES,
    "clip_anomalous_states": CLIP_ANOMALOUS_STATES,
    "damaged_states": DAMAGED_STATES,
}


def prompt_list(name: str) -> tuple[str, ...]:
    """The list registered in :data:`PROMPT_LISTS` under ``name`` (what a method yaml names).

    Raises:
        KeyError: naming the known lists.
    """
    if name not in PROMPT_LISTS:
        raise KeyError(f"unknown prompt list {name!r}; known: {', '.join(sorted(PROMPT_LISTS))}")
    return PROMPT_LISTS[name]


def compose(
    templates: Sequence[str],
    states: Sequence[str],
    class_name: str,
    order: Order = "state_major",
) -> list[str]:
    """Every sentence ``template.format(state.format(class_name))``.

    Args:
        templates: sentence templates with one ``{}``.
        states: state phrases with one ``{}`` for the class name.
        class_name: the words for the category.
        order: ``state_major`` (all templates of the first state first; anomalib) or
            ``template_major`` (all states of the first template first; caoyunkang, AnoVL, APRIL-GAN).

    Returns:
        ``len(templates) * len(states)`` sentences.

    Example:
        >>> compose(["a {}.", "the {}."], ["{}", "bad {}"], "cat", order="template_major")
        ['a cat.', 'a bad cat.', 'the cat.', 'the bad cat.']
    """
    if order not in ("state_major", "template_major"):
        raise ValueError(f"order must be 'state_major' or 'template_major', got {order!r}")
    phrases = [s.format(class_name) for s in states]
    if order == "state_major":
        return [t.format(p) for p in phrases for t in templates]
    return [t.format(p) for t in templates for p in phrases]


def two_class_prompts(
    class_name: str,
    normal_states: Sequence[str],
    anomalous_states: Sequence[str],
    templates: Sequence[str],
    order: Order = "state_major",
    articles: bool = False,
) -> tuple[list[str], list[str]]:
    """The normal and the anomalous sentences of a compositional ensemble.

    Args:
        class_name: the words for the category.
        normal_states: normal state phrases.
        anomalous_states: anomalous state phrases.
        templates: sentence templates.
        order: see :func:`compose`.
        articles: apply :func:`fix_articles` (never for lists reproduced from a reference).

    Returns:
        (normal sentences, anomalous sentences).
    """
    normal = compose(templates, normal_states, class_name, order)
    anomalous = compose(templates, anomalous_states, class_name, order)
    if articles:
        normal, anomalous = [fix_articles(s) for s in normal], [fix_articles(s) for s in anomalous]
    return normal, anomalous


_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def fix_articles(sentence: str) -> str:
    """Turn "a" into "an" before a word starting with a vowel letter.

    Example:
        >>> fix_articles("a photo of a anomalous apple")
        'a photo of an anomalous apple'
    """
    return _A_BEFORE_VOWEL.sub(lambda m: m.group(1) + "n ", sentence)


def domain_templates(phrase: str, base: Sequence[str] = ANOCLIP_BASE_TEMPLATES) -> tuple[str, ...]:
    """AnoCLIP's domain variant of a template list: the word "photo" becomes ``phrase``.

    Templates that begin with "a photo" take "an" when the phrase starts with a vowel, as the
    official lists do ("an industrial photo of a {}", "a manufacturing image of a {}").

    Example:
        >>> domain_templates("industrial image", ["a photo of a {}", "a dark photo of the {}"])
        ('an industrial image of a {}', 'a dark industrial image of the {}')
    """
    article = "an" if phrase[:1].lower() in "aeiou" else "a"
    out = []
    for template in base:
        swapped = re.sub(r"\bphoto\b", phrase, template, count=1)
        if template.startswith("a photo"):
            swapped = f"{article} {swapped[2:]}"
        out.append(swapped)
    return tuple(out)


def anoclip_class_name(category: str) -> str:
    """The class word AnoVL puts in prompts (``macaroni1`` → ``macaroni``, other names verbatim)."""
    return ANOCLIP_CLASS_NAMES.get(category, category)


def anoclip_templates(category: str, domains: Sequence[str] | None = None) -> tuple[str, ...]:
    """The domain-aware templates of one category (66 with the official code's choice).

    Args:
        category: the dataset category (decides texture vs object domains when ``domains`` is None).
        domains: explicit domain phrases; None picks :data:`ANOCLIP_TEXTURE_DOMAINS` for the
            texture classes and :data:`ANOCLIP_OBJECT_DOMAINS` for the others, as the official code.
    """
    if domains is None:
        domains = ANOCLIP_TEXTURE_DOMAINS if category in ANOCLIP_TEXTURE_CLASSES else ANOCLIP_OBJECT_DOMAINS
    return tuple(t for d in domains for t in domain_templates(d))
