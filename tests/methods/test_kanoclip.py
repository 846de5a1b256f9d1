"""KAnoCLIP on tiny random CLIPs (64 px, 4×4 patch grid), CPU: L_KD, deformable attention, Bi-CMCI,
ablation switches, training on the synthetic auxiliary data, checkpoints, the shared trainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zsad_bench.checkpoints import load_state, save_state
from zsad_bench.context import Context
from zsad_bench.methods._kanoclip_nn import DeformableSelfAttention, kd_loss, reference_pattern
from zsad_bench.methods.kanoclip import KAnoCLIP, KAnoCLIPConfig, resolve_switches
from zsad_bench.types import Batch, SampleRecord

SIZE = 64
TINY = {"name": "tiny_clip", "weights": "random", "input_size": SIZE}
SMALL = {"bicmci_dim": 32, "bicmci_heads": 2}  # small Bi-CMCI for fast tests


@pytest.fixture(scope="module")
def ctx():
    return Context(device="cpu", seed=0, backbone_cfg=TINY)


def method(context, **kw) -> KAnoCLIP:
    m = KAnoCLIP(KAnoCLIPConfig(**{**SMALL, **kw}))
    m.setup(context)
    return m


def batch(n=2, seed=0, category="bottle", labels=False):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, SIZE, SIZE, generator=g)
    recs = [SampleRecord(Path(f"k{seed}_{i}.png"), i % 2, None, category, "good", "test", "fake") for i in range(n)]
    b = Batch(images, recs, [category] * n)
    if labels:
        b.labels = torch.tensor([i % 2 for i in range(n)])
        b.masks = torch.zeros(n, SIZE, SIZE)
        b.masks[1::2, 16:40, 20:44] = 1.0
    return b


# ----------------------------------------------------------------------------- L_KD (Eq. 2-3)
def test_kd_loss_equals_a_hand_computation():
    # knowledge mean (2, 0) → (1, 0); normal mean (1, 1) → (1, 1)/√2; abnormal mean (0, 3) → (0, 1).
    k = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    n = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    a = torch.tensor([[0.0, 3.0]])
    # |(1,0) − (0,1)| = √2;  |(1,0) − (1,1)/√2|² = (1 − 1/√2)² + 1/2 = 2 − √2
    expected = math.sqrt(2.0) - math.sqrt(2.0 - math.sqrt(2.0))
    assert float(kd_loss(k, n, a)) == pytest.approx(expected, abs=1e-6)


def test_kd_loss_is_zero_when_the_abnormal_prompts_are_closer_to_the_knowledge():
    k = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    n = torch.tensor([[0.0, 3.0]])
    a = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert float(kd_loss(k, n, a)) == 0.0
    g = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    assert float(kd_loss(g[:2], g[2:], g[:2])) == 0.0  # abnormal == knowledge: distance 0


def test_kd_loss_gradient_pulls_the_abnormal_mean_towards_the_knowledge():
    k = torch.tensor([[1.0, 0.0]])
    n = torch.tensor([[1.0, 0.1]])
    a = torch.tensor([[0.0, 1.0]], requires_grad=True)
    kd_loss(k, n, a).backward()
    assert a.grad[0, 0] < 0  # a step against the gradient increases the first coordinate


# ----------------------------------------------------------------------------- deformable attention
def _neighbourhood_attention(m: DeformableSelfAttention, x, grid, shift=(0, 0)):
    """Ordinary multi-head attention of every patch over its (shifted) 3×3 neighbourhood, zero padded."""
    b, n, d = x.shape
    rows, cols = grid
    h, hd = m.heads, m.head_dim
    q = m.q(x).view(b, n, h, hd)
    k, v = m.kv(x).view(b, n, 2, h, hd).unbind(dim=2)  # (B, N, h, hd) each
    out = torch.zeros(b, n, h, hd)
    for idx in range(n):
        r, c = divmod(idx, cols)
        keys, values = [], []
        for dx, dy in reference_pattern(3).tolist():
            rr, cc = r + int(dy) + shift[1], c + int(dx) + shift[0]
            inside = 0 <= rr < rows and 0 <= cc < cols
            keys.append(k[:, rr * cols + cc] if inside else torch.zeros(b, h, hd))
            values.append(v[:, rr * cols + cc] if inside else torch.zeros(b, h, hd))
        keys, values = torch.stack(keys, dim=2), torch.stack(values, dim=2)  # (B, h, P, hd)
        attn = torch.einsum("bhc,bhpc->bhp", q[:, idx], keys) / hd**0.5
        out[:, idx] = torch.einsum("bhp,bhpc->bhc", attn.softmax(dim=-1), values)
    return m.out(out.reshape(b, n, d))


def test_deformable_attention_with_zero_offsets_is_attention_over_the_neighbourhood():
    torch.manual_seed(0)
    m = DeformableSelfAttention(16, heads=2, kernel=3)
    x, grid = torch.randn(2, 20, 16), (4, 5)
    torch.testing.assert_close(m(x, grid), _neighbourhood_attention(m, x, grid), rtol=1e-5, atol=1e-5)


def test_deformable_attention_offsets_move_the_sampled_positions():
    torch.manual_seed(0)
    m = DeformableSelfAttention(16, heads=2, kernel=3)
    with torch.no_grad():
        m.offsets.bias.view(2, 9, 2)[..., 0] = 1.0  # every point one patch to the right (x = column)
    x, grid = torch.randn(1, 20, 16), (4, 5)
    torch.testing.assert_close(m(x, grid), _neighbourhood_attention(m, x, grid, shift=(1, 0)), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        m.offsets.bias.add_(0.3)  # off the grid points: bilinear, gradients reach the offset predictor
    m(x, grid).sum().backward()
    assert m.offsets.weight.grad is not None
    assert m.offsets.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- Bi-CMCI and the method
def test_bicmci_stage_outputs_across_the_four_stages(ctx):
    m = method(ctx)
    b = batch(n=3)
    patches, global_feat = m.image_features(b)
    rows, cols = ctx.backbone.grid_size
    e = ctx.backbone.embed_dim
    assert sorted(patches) == [6, 12, 18, 24]
    assert all(t.shape == (3, rows * cols, e) for t in patches.values())
    assert global_feat.shape == (3, e)
    text = m.text_features(b.class_names)
    assert text.shape == (3, 2, e)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3, 2))
    with torch.no_grad():
        logits = m.stage_logits(b, text)
    assert sorted(logits) == [6, 12, 18, 24]
    assert all(t.shape == (3, rows * cols, 2) for t in logits.values())
    assert len({float(t.abs().sum()) for t in logits.values()}) == 4  # four different stages
    pred = m.predict(b)
    assert pred.anomaly_maps.shape == (3, SIZE, SIZE)
    assert float(pred.anomaly_maps.min()) >= 0.0  # Eq. 9-10: in [0, 1]
    assert float(pred.anomaly_maps.max()) <= 1.0


def _expected_adapter(e: int, reduction: int = 4) -> int:
    b = e // reduction
    return 2 * e + 2 * e + (e * b + b) + (b * e + e)  # LayerNorm, depthwise 1x1, W_down, W_up (with biases)


def test_each_ablation_switch_removes_exactly_its_module(ctx):
    full = method(ctx).parameter_counts()
    bb = ctx.backbone
    e, d = bb.embed_dim, bb.text_width
    assert full["knpl"] == 2 * 12 * d  # two K = 12 prefixes of word embeddings
    assert full["conv_adapter"] == _expected_adapter(e)
    assert full["bicmci"] > 0
    off = {
        name: method(ctx, **{name: False}).parameter_counts() for name in ("knpl", "clip_vv", "bicmci", "conv_adapter")
    }
    assert off["knpl"] == {**full, "knpl": 0, "total": full["total"] - full["knpl"]}
    assert off["conv_adapter"] == {**full, "conv_adapter": 0, "total": full["total"] - full["conv_adapter"]}
    linear = 4 * (e * e + e)  # Bi-CMCI replaced by one Linear(E, E) per stage
    assert off["bicmci"] == {**full, "bicmci": linear, "total": full["total"] - full["bicmci"] + linear}
    assert off["clip_vv"] == full  # CLIP-VV has no parameters; it changes the features
    vv, plain = method(ctx), method(ctx, clip_vv=False)
    assert vv.feature_spec().variant == "vv"
    assert plain.feature_spec().variant == "tokens"
    b = batch()
    assert not torch.allclose(vv.image_features(b)[0][24], plain.image_features(b)[0][24])


def test_table3_rows_add_the_modules_in_the_papers_order():
    rows = [resolve_switches(KAnoCLIPConfig(table3_row=r)) for r in range(1, 6)]
    assert [sum(r.values()) for r in rows] == [0, 1, 2, 3, 4]
    assert rows[1] == {"knpl": True, "clip_vv": False, "bicmci": False, "conv_adapter": False}
    assert rows[4] == resolve_switches(KAnoCLIPConfig())
    with pytest.raises(ValueError, match="table3_row"):
        resolve_switches(KAnoCLIPConfig(table3_row=6))


def test_handcrafted_prompts_without_knpl_have_no_kd_term(ctx):
    m = method(ctx, knpl=False)
    terms = m.training_step(batch(labels=True))
    assert set(terms) == {"focal", "dice", "dice_normal", "global_bce"}
    assert m.training_report()["knowledge"]["sources"] == ["none (knpl off)"]


@pytest.mark.parametrize("mode", ["mean", "prob_plus_max", "prob"])
def test_global_score_readings_of_eq12(ctx, mode):
    m = method(ctx, global_score=mode)
    b = batch()
    pred = m.predict(b)
    with torch.no_grad():
        _, p = m._forward(b, m.text_features(b.class_names))
    peak = pred.anomaly_maps.flatten(1).amax(dim=1)
    expected = {"mean": (p + peak) / 2, "prob_plus_max": p + peak, "prob": p}[mode]
    torch.testing.assert_close(pred.image_scores, expected.float())
    if mode != "prob_plus_max":
        assert float(pred.image_scores.max()) <= 1.0


def test_invalid_options_fail_clearly():
    with pytest.raises(ValueError, match="global_score"):
        KAnoCLIP(KAnoCLIPConfig(global_score="sum"))
    with pytest.raises(ValueError, match="first_block"):
        KAnoCLIP(KAnoCLIPConfig(layers=[3, 24]))


# ----------------------------------------------------------------------------- knowledge in the method
def test_knowledge_comes_from_the_shipped_file_and_is_recorded(ctx, tmp_path):
    from zsad_bench.knowledge import KnowledgeFile

    m = method(ctx)
    assert m.knowledge_features("bottle").shape == (5, ctx.backbone.embed_dim)
    m.knowledge_features("a made-up thing")
    report = m.training_report()["knowledge"]
    assert report["classes"] == {"bottle": "written:shipped", "a made-up thing": "generic"}
    assert report["sources"] == ["generic", "written"]
    mine = KnowledgeFile({"bottle": ["A bottle with a crack."]}, source="llm", model="tiny").save(tmp_path / "k.yaml")
    m2 = method(ctx, knowledge_files=[str(mine)])
    assert m2.knowledge_features("bottle").shape == (1, ctx.backbone.embed_dim)
    assert m2.training_report()["knowledge"]["classes"]["bottle"] == "llm:k.yaml"


def test_vqa_descriptions_join_the_knowledge_mean(ctx, tmp_path):
    from zsad_bench.knowledge import VQA_QUESTION, VQACache

    b = batch(labels=True)
    cache = VQACache(tmp_path / "vqa", "tiny-vqa")
    cache.put(b.records[1].image_path, VQA_QUESTION.format(cls="bottle"), "A bottle with a chipped rim.")
    plain, with_vqa = method(ctx), method(ctx, vqa_cache=str(tmp_path / "vqa"), vqa_model="tiny-vqa")
    feats = with_vqa._vqa_features(b)
    assert feats[0] is None
    assert feats[1].shape == (ctx.backbone.embed_dim,)
    e = ctx.backbone.embed_dim
    assert plain.batch_knowledge(b, "bottle").shape == (5, e)  # N = 5 file descriptions
    know = with_vqa.batch_knowledge(b, "bottle")
    assert know.shape == (6, e)  # + M = 1 VQA description (the second image's)
    torch.testing.assert_close(know[5], feats[1])
    with_vqa.training_step(b)
    report = with_vqa.training_report()["knowledge"]
    assert report["vqa_descriptions_used"] >= 1
    assert "vqa" in report["sources"]


def test_training_identity_follows_the_knowledge_contents_not_the_file_names(ctx, tmp_path):
    from zsad_bench.knowledge import VQA_QUESTION, KnowledgeFile, VQACache

    path = KnowledgeFile({"bottle": ["A bottle with a crack."]}).save(tmp_path / "k.yaml")
    first = method(ctx, knowledge_files=[str(path)]).training_identity()
    assert method(ctx, knowledge_files=[str(path)]).training_identity() == first
    KnowledgeFile({"bottle": ["A bottle with a dent."]}).save(path)  # edited in place, same name
    assert method(ctx, knowledge_files=[str(path)]).training_identity()["knowledge"] != first["knowledge"]
    cache = VQACache(tmp_path / "vqa", "tiny-vqa")
    cache.put(Path("a.png"), VQA_QUESTION.format(cls="bottle"), "A chipped rim.")
    with_vqa = method(ctx, vqa_cache=str(tmp_path / "vqa"), vqa_model="tiny-vqa").training_identity()
    cache.put(Path("a.png"), VQA_QUESTION.format(cls="bottle"), "A scratched label.")
    assert method(ctx, vqa_cache=str(tmp_path / "vqa"), vqa_model="tiny-vqa").training_identity() != with_vqa
    assert method(ctx, knpl=False).training_identity() == {}


# ----------------------------------------------------------------------------- training and checkpoints
@pytest.fixture(scope="module")
def aux_batches(tmp_path_factory):
    """The synthetic auxiliary set (synth_aux) decoded at 64 px, 2 images per category (one batch of 8)."""
    from zsad_bench.auxdata import AuxDataset, build_aux, to_batch
    from zsad_bench.synth import AUX_CATEGORIES, SynthSpec, ensure_synth

    root = tmp_path_factory.mktemp("data")
    ensure_synth(root / "synth_aux", SynthSpec(AUX_CATEGORIES, seed=1))
    aux = build_aux([{"name": "synth_aux", "root": str(root / "synth_aux")}], {"data_root": str(root)}, "test", 2)
    data = AuxDataset(aux, {"input_size": SIZE, "interpolation": "bicubic"})
    items = [data[i] for i in range(len(data))]
    return root, [to_batch(items[i : i + 8], aux, torch.device("cpu")) for i in range(0, len(items), 8)]


def _terms(m, batches) -> dict[str, float]:
    out: dict[str, float] = {}
    with torch.no_grad():
        for b in batches:
            for k, v in m.training_step(b).items():
                out[k] = out.get(k, 0.0) + float(v) / len(batches)
    return out


def _method_with_positive_kd(ctx, batches) -> KAnoCLIP:
    """The first prompt-initialisation seed whose initial L_KD is clearly positive (so that it can fall)."""
    for seed in range(40):
        m = method(ctx, train_seed=seed)
        with torch.no_grad():
            kd = sum(float(m._kd_term(b, m.text_features(b.class_names, with_sentences=True)[1])) for b in batches)
        if kd > 1e-3:
            return m
    pytest.fail("no seed in 0..39 gives a positive initial L_KD")


def test_a_few_steps_on_synth_lower_each_loss_term(ctx, aux_batches):
    from zsad_bench.train import TrainRecipe, fit_batches

    _, batches = aux_batches
    m = _method_with_positive_kd(ctx, batches)
    before = _terms(m, batches)
    assert set(before) == {"kd", "global_bce", "focal", "dice", "dice_normal"}
    losses = fit_batches(m, batches, TrainRecipe(epochs=4, batch_size=8, lr=2e-3, betas=(0.5, 0.999), seed=0))
    after = _terms(m, batches)
    assert all(math.isfinite(x) for x in losses)
    for key in before:
        assert after[key] < before[key], (key, before[key], after[key])


def test_learnable_state_round_trips_through_safetensors(ctx, tmp_path):
    m = method(ctx)
    with torch.no_grad():
        for p in m.parameters_to_train():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    state = m.learnable_state()
    assert {k.split(".")[0] for k in state} == {"prompts", "stages", "adapter"}
    save_state(tmp_path / "k.safetensors", state)
    fresh = method(ctx)
    b = batch(seed=5)
    assert not torch.equal(fresh.predict(b).anomaly_maps, m.predict(b).anomaly_maps)
    fresh.load_learnable_state(load_state(tmp_path / "k.safetensors"))
    torch.testing.assert_close(fresh.predict(b).anomaly_maps, m.predict(b).anomaly_maps, rtol=0, atol=0)
    torch.testing.assert_close(fresh.predict(b).image_scores, m.predict(b).image_scores, rtol=0, atol=0)
    with pytest.raises(RuntimeError):
        method(ctx, conv_adapter=False).load_learnable_state(state)  # strict: an ablated model refuses it


def test_shared_trainer_trains_and_reloads_by_tag(aux_batches, tmp_path):
    from importlib import resources

    from omegaconf import OmegaConf

    from zsad_bench.train import train_or_load

    root, _ = aux_batches
    train = OmegaConf.load(str(resources.files("zsad_bench.conf") / "train" / "default.yaml"))
    cfg = OmegaConf.create({
        "method": {"name": "kanoclip", **SMALL},
        "backbone": TINY,
        "dataset": {"name": "synth", "categories": "all", "root": str(root / "synth"), "aux": "synth_aux"},
        "train": OmegaConf.merge(train, {"progress": False, "epochs": 1, "max_steps": 1, "max_per_category": 2}),
        "paths": {"data_root": str(root), "weights_root": str(tmp_path / "w"), "results_root": str(tmp_path / "r")},
        "seed": 0,
    })  # fmt: skip
    c = Context(device="cpu", seed=0, backbone_cfg=TINY)
    trained = method(c)
    record = train_or_load(trained, cfg, c)
    assert (record.tag, record.status, record.steps) == ("kanoclip.synth_aux", "trained", 1)
    assert record.method["modules"] == {"knpl": True, "clip_vv": True, "bicmci": True, "conv_adapter": True}
    assert "written" in record.method["knowledge"]["sources"]
    again = method(c)
    assert train_or_load(again, cfg, c).status == "loaded"
    for key, value in trained.learnable_state().items():
        assert torch.equal(again.learnable_state()[key], value), key


def test_map_is_gaussian_of_eq10(ctx):
    from zsad_bench.heads import gaussian_smooth

    m = method(ctx, sigma=2.0)
    b = batch()
    with torch.no_grad():
        probs, _ = m._forward(b, m.text_features(b.class_names))
    expected = gaussian_smooth((probs[:, 1] + 1 - probs[:, 0]) / 2, 2.0)
    torch.testing.assert_close(m.predict(b).anomaly_maps, expected)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, SIZE, SIZE))  # mean of stage softmaxes
    assert F.relu(-probs).sum() == 0


# ----------------------------------------------------------------------------- experiments
@pytest.mark.parametrize("name", ["kanoclip_table1", "kanoclip_table2", "kanoclip_table3"])
def test_experiments_compose_and_every_job_builds(name):
    import itertools

    from hydra import compose, initialize_config_module

    from zsad_bench.build import build_method

    with initialize_config_module(config_module="zsad_bench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
        params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
        jobs = list(itertools.product(*params.values()))
        for values in jobs:
            job = compose(
                config_name="config", overrides=[f"experiment={name}", *map("=".join, zip(params, values, strict=True))]
            )
            m = build_method(job.method)
            assert isinstance(m, KAnoCLIP)
            assert job.backbone.name == "clip_vit_l14_336"
    assert len(jobs) == {"kanoclip_table1": 6, "kanoclip_table2": 6, "kanoclip_table3": 10}[name]


def test_global_bce_equals_torch_and_runs_in_fp32_under_autocast():
    from zsad_bench.methods.kanoclip import _bce

    p, y = torch.tensor([0.2, 0.9, 0.5]), torch.tensor([0.0, 1.0, 1.0])
    torch.testing.assert_close(_bce(p, y), F.binary_cross_entropy(p, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _bce(p.bfloat16(), y).dtype == torch.float32
