"""KAnoCLIP's knowledge sources: the shipped file, knowledge files, LLM and VQA generation with tiny
randomly initialised transformers models built from configs (no download), the ``knowledge`` command."""

from __future__ import annotations

import pytest

from zsad_bench.commands.knowledge import main, registered_classes
from zsad_bench.knowledge import (
    FORMAT,
    VQA_QUESTION,
    KnowledgeBase,
    KnowledgeFile,
    VQACache,
    clean_answer,
    describe_images,
    generic_descriptions,
    shipped_knowledge,
    shipped_knowledge_files,
)


def _word_tokenizer(words: list[str], specials: dict[str, str]):
    """A word-level fast tokenizer over ``words`` (built locally, nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[EOS]": 1, **{t: i + 2 for i, t in enumerate(specials.values())}}
    for w in dict.fromkeys(words):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"extra_special_tokens": specials} if specials else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]", **extra
    )


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A 1-layer GPT-2 with random weights and a word-level tokenizer, saved as a local model folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-llm")
    tok = _word_tokenizer(
        [
            *["q", ":", "describe", "what", "an", "abnormal", "image", "of", "looks", "like", "?"],
            "a",
            "crack",
            "hole",
            "stain",
            ".",
        ],
        {},
    )
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=1
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """A LLaVA (CLIP vision tower + 1-layer Llama) with random weights and its processor, as a local folder."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny-vlm")
    tok = _word_tokenizer(VQA_QUESTION.format(cls="bottle").split() + ["crack", "hole"], {"image_token": "<image>"})
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=16, image_token="<image>",
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)  # fmt: skip
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=16, projection_dim=16)  # fmt: skip
    text = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                       bos_token_id=1, eos_token_id=1, pad_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=2, vision_feature_layer=-1,
                      vision_feature_select_strategy="default", image_seq_length=4)  # fmt: skip
    LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ----------------------------------------------------------------------------- the shipped file
def test_shipped_knowledge_covers_every_category_of_every_registered_dataset():
    kf = shipped_knowledge()
    missing = {d: [c for c in cs if c not in kf.descriptions] for d, cs in registered_classes().items()}
    assert {d: cs for d, cs in missing.items() if cs} == {}
    for name, desc in kf.descriptions.items():
        assert len(set(desc)) == len(desc) == 5, name
        assert all(10 < len(s) < 200 for s in desc), name


def test_shipped_files_are_marked_as_written_by_us():
    files = shipped_knowledge_files()
    assert files, "conf/knowledge/*.yaml is missing from the package"
    for path in files:
        kf = KnowledgeFile.load(path)
        assert (kf.source, kf.model) == ("written", "")
        assert "written by hand" in kf.author


def test_knowledge_file_round_trip_and_validation(tmp_path):
    kf = KnowledgeFile({"b": ["x y"], "a": ["one", "two"]}, source="llm", model="m", notes="n")
    back = KnowledgeFile.load(kf.save(tmp_path / "k.yaml"))
    assert (back.descriptions, back.source, back.model, back.path) == (kf.descriptions, "llm", "m", tmp_path / "k.yaml")
    assert (tmp_path / "k.yaml").read_text().startswith(f"format: {FORMAT}")
    (tmp_path / "bad.yaml").write_text(f"format: {FORMAT}\ndescriptions:\n  a: [1, '']\n")
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        KnowledgeFile.load(tmp_path / "bad.yaml")
    (tmp_path / "old.yaml").write_text("descriptions: {}\n")
    with pytest.raises(ValueError, match="format"):
        KnowledgeFile.load(tmp_path / "old.yaml")
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        KnowledgeFile.load(tmp_path / "nope.yaml")


def test_knowledge_base_priority_fallback_and_report():
    first = KnowledgeFile({"metal nut": ["mine"]}, source="llm")
    kb = KnowledgeBase([first, shipped_knowledge()], per_class=3)
    assert kb.descriptions("metal nut") == ["mine"]
    assert kb.descriptions("metal_nut") == ["mine"]  # folder names find the prompt words
    assert len(kb.descriptions("bottle")) == 3
    assert kb.descriptions("gizmo") == generic_descriptions("gizmo")[:3]
    assert kb.report()["sources"] == ["generic", "llm", "written"]
    with pytest.raises(KeyError, match="gizmo"):
        KnowledgeBase([first], generic_fallback=False).descriptions("gizmo")


def test_clean_answer():
    assert clean_answer("Q: why?  A:  a   crack\n here", "Q: why?") == "a crack here"
    assert clean_answer("x" * 500, max_chars=10) == "x" * 10


# ----------------------------------------------------------------------------- generation
def test_llm_generation_through_the_command_writes_a_well_formed_file(tiny_llm, tmp_path, capsys):
    out = tmp_path / "btad.yaml"
    args = ["generate", f"model={tiny_llm}", "dataset=btad", f"out={out}", "n=2", "max_new_tokens=4"]
    assert main(args) == 0
    kf = KnowledgeFile.load(out)
    assert (kf.source, kf.model) == ("llm", str(tiny_llm))
    assert kf.question.format(cls="x") == "Q: Describe what an abnormal image of x looks like?"
    assert sorted(kf.descriptions) == registered_classes("btad")["btad"] == ["01", "02", "03"]
    assert all(len(v) == 2 and all(s.strip() for s in v) for v in kf.descriptions.values())
    assert "wrote 3 classes" in capsys.readouterr().out


def test_generation_needs_a_local_model(tmp_path):
    assert main(["generate", f"model={tmp_path / 'absent'}", "dataset=btad"]) == 2
    assert main(["generate", "dataset=btad"]) == 2
    assert main(["frobnicate"]) == 2


def test_vqa_descriptions_are_generated_once_and_cached(tiny_vlm, tmp_path):
    import numpy as np
    from PIL import Image

    image = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8")).save(image)
    cache = VQACache(tmp_path / "vqa", "tiny-vlm")
    first = describe_images(tiny_vlm, [image], ["bottle"], cache, max_new_tokens=4)
    assert len(first) == 1
    assert first[0].strip()
    assert cache.get(image, VQA_QUESTION.format(cls="bottle")) == first[0]
    # cached: the model is not needed any more
    assert describe_images(tmp_path / "no-model", [image], ["bottle"], cache) == first
    assert cache.lookup([image, tmp_path / "other.png"], ["bottle", "bottle"]) == [first[0], None]


def test_check_and_show_commands(capsys, tmp_path):
    assert main(["check"]) == 0
    assert "registered classes missing" in capsys.readouterr().out
    KnowledgeFile({"bottle": ["a"]}).save(tmp_path / "k.yaml")
    assert main(["check", f"file={tmp_path / 'k.yaml'}", "dataset=btad"]) == 1
    assert main(["show", "class=bottle"]) == 0
    assert "bottle:" in capsys.readouterr().out


def test_vqa_command_describes_dataset_images(tiny_vlm, tmp_path, capsys):
    from zsad_bench.synth import SynthSpec, ensure_synth

    root = tmp_path / "synth"
    ensure_synth(root, SynthSpec({"bottle_like": ("industrial", "disk")}, seed=0, size=32, n_test_good=1))
    args = ["vqa", f"model={tiny_vlm}", "dataset=synth", f"root={root}", f"cache={tmp_path / 'vqa'}", "limit=2"]
    assert main([*args, "max_new_tokens=3"]) == 0
    assert "2 images described" in capsys.readouterr().out
    entries = sorted((tmp_path / "vqa").rglob("*.json"))
    assert len(entries) == 2
