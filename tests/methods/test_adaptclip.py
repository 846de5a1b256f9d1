"""AdaptCLIP on tiny random CLIPs (64 px, 4×4 patch grid), CPU.

The pure pieces (nearest-patch search, fusion, pooling) against loops and hand-computed values;
the branches against the frozen features and their switches by gradients; training on the synthetic
auxiliary data with prompts from its train split; checkpoints through safetensors and the shared
trainer; the experiments by Hydra composition. The shared contract test (``test_contract.py``) runs
the zero-shot and few-shot paths too.
"""

from __future__ import annotations

import doctest
import math
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zsad_bench.checkpoints import load_state, save_state
from zsad_bench.context import Context
from zsad_bench.features import FeatureCache
from zsad_bench.methods import adaptclip as acl
from zsad_bench.methods.adaptclip import (
    AdaptCLIP,
    AdaptCLIPConfig,
    build_parts,
    fuse_few_shot,
    fuse_zero_shot,
    harmonic_mean,
    nearest_prompt_tokens,
    topk_pool,
)
from zsad_bench.trainloop import seed_all
from zsad_bench.types import Batch, SampleRecord

REPO = Path(__file__).resolve().parents[2]
SIZE = 64
TINY = {"name": "tiny_clip", "weights": "random", "input_size": SIZE, "activation": "quick_gelu",
        "pos_interp": "bilinear"}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is as fast alone and far faster on a shared, loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ctx():
    return Context(device="cpu", seed=0, backbone_cfg=TINY)


def method(context, **kw) -> AdaptCLIP:
    m = AdaptCLIP(AdaptCLIPConfig(**kw))
    m.setup(context)
    return m


def batch(n=2, seed=0, category="bottle", labels=False):
    g = torch.Generator().manual_seed(seed)
    recs = [SampleRecord(Path(f"q{seed}_{i}.png"), i % 2, None, category, "d", "test", "fake") for i in range(n)]
    b = Batch(torch.randn(n, 3, SIZE, SIZE, generator=g), recs, [category] * n)
    if labels:
        b.labels = torch.tensor([i % 2 for i in range(n)])
        b.masks = torch.zeros(n, SIZE, SIZE)
        b.masks[1::2, 16:40, 20:44] = 1.0
    return b


def test_doctests_run():
    import zsad_bench.methods._adaptclip_parts as parts

    results = [doctest.testmod(m, optionflags=doctest.NORMALIZE_WHITESPACE) for m in (acl, parts)]
    assert sum(r.attempted for r in results) >= 2
    assert all(r.failed == 0 for r in results)


# ----------------------------------------------------------------------------- pure pieces
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("shared", [False, True])
def test_nearest_patch_search_equals_a_brute_force_loop(metric, shared):
    g = torch.Generator().manual_seed(3)
    query = torch.randn(2, 6, 5, generator=g)
    prompt = torch.randn(7, 5, generator=g) if shared else torch.randn(2, 7, 5, generator=g)
    aligned, score, index = nearest_prompt_tokens(query, prompt, metric)
    for b in range(2):
        cand = prompt if shared else prompt[b]
        for i in range(6):
            best, best_j = None, None
            for j in range(7):
                q, p = query[b, i], cand[j]
                if metric == "cosine":
                    d = 1.0 - float((q @ p) / (q.norm() * p.norm()))
                else:
                    d = math.sqrt(sum((float(a) - float(c)) ** 2 for a, c in zip(q, p, strict=True)))
                if best is None or d < best:
                    best, best_j = d, j
            assert int(index[b, i]) == best_j
            assert float(score[b, i]) == pytest.approx(best, abs=1e-5)
            expected = cand[best_j] / cand[best_j].norm() if metric == "cosine" else cand[best_j]
            torch.testing.assert_close(aligned[b, i], expected)


def test_topk_pool_and_joint_features():
    x = torch.arange(12.0).reshape(1, 2, 2, 3)  # 2 channels of 6 values
    ch0, ch1 = list(range(6)), list(range(6, 12))
    expected = [(sum(c) / 6 + (c[-1] + c[-2]) / 2) / 2 for c in (ch0, ch1)]
    assert topk_pool(x, 2)[0].tolist() == pytest.approx(expected)
    assert topk_pool(x, 1)[0].tolist() == pytest.approx([(2.5 + 5) / 2, (8.5 + 11) / 2])  # the paper's avg + max
    q, p = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, -1.0]])
    assert acl.joint_features(q, p).tolist() == [[3.0, -1.0]]  # q + |q - p|
    assert acl.joint_features(q, p, context=False).tolist() == [[2.0, 1.0]]


def test_zero_shot_fusion_on_hand_built_maps():
    va = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])
    ta = torch.tensor([[[0.4, 0.0], [0.2, 1.0]]])
    scores, maps = fuse_zero_shot([va, ta], [torch.tensor([0.5]), torch.tensor([0.7])], sigma=0)
    torch.testing.assert_close(maps, torch.tensor([[[0.3, 0.2], [0.4, 0.9]]]))
    torch.testing.assert_close(scores, torch.tensor([(0.5 + 0.7 + 0.9) / 3]))  # code: the map maximum joins
    scores, _ = fuse_zero_shot([va, ta], [torch.tensor([0.5]), torch.tensor([0.7])], sigma=0, fusion="paper")
    torch.testing.assert_close(scores, torch.tensor([0.6]))


def test_few_shot_fusion_on_hand_built_maps():
    va = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])
    ta = torch.tensor([[[0.4, 0.0], [0.2, 1.0]]])
    pq = torch.tensor([[[0.3, 0.2], [0.1, 0.0]]])  # mean of the three: [[0.3, 0.2], [0.3, 0.6]]
    align = torch.tensor([[[0.6, 0.0], [0.3, 0.2]]])
    probs = [torch.tensor([0.5]), torch.tensor([0.7]), torch.tensor([0.3])]  # mean 0.5
    scores, maps = fuse_few_shot([va, ta, pq], probs, align, sigma=0)
    # harmonic means 2ab/(a+b): (0.3, 0.6) -> 0.4, (0.2, 0) -> 0, (0.3, 0.3) -> 0.3, (0.6, 0.2) -> 0.3
    torch.testing.assert_close(maps, torch.tensor([[[0.4, 0.0], [0.3, 0.3]]]))
    torch.testing.assert_close(scores, torch.tensor([2 * 0.5 * 0.4 / 0.9]))  # H(0.5, max 0.4)
    scores, maps = fuse_few_shot([va, ta, pq], probs, align, sigma=0, fusion="paper")
    torch.testing.assert_close(maps, torch.tensor([[[0.3, 0.2], [0.3, 0.6]]]))
    torch.testing.assert_close(scores, torch.tensor([0.5]))


def test_fusion_sets_non_finite_values_to_zero_and_smooths_last():
    from scipy.ndimage import gaussian_filter

    va = torch.tensor([[[float("nan"), 0.4], [0.0, 0.8]]])
    align = torch.tensor([[[0.5, 0.5], [0.0, float("inf")]]])
    scores, maps = fuse_few_shot([va], [torch.tensor([float("nan")])], align, sigma=0)
    # NaN map -> 0; 0 with 0 -> 0 (not NaN); 0.8 with inf -> 2 / (1.25 + 0) = 1.6; score NaN -> 0
    torch.testing.assert_close(maps, torch.tensor([[[0.0, 2 * 0.4 * 0.5 / 0.9], [0.0, 1.6]]]))
    assert scores.tolist() == [0.0]
    _, zmaps = fuse_zero_shot([va], [torch.tensor([float("inf")])], sigma=0)
    assert torch.isfinite(zmaps).all()
    g = torch.Generator().manual_seed(0)
    big = [torch.rand(2, 24, 24, generator=g) for _ in range(3)]
    al = torch.rand(2, 24, 24, generator=g)
    _, smoothed = fuse_few_shot(big, [torch.rand(2, generator=g)] * 3, al, sigma=4)
    raw = harmonic_mean(torch.stack([torch.stack(big).mean(0), al]))
    expected = torch.stack([torch.from_numpy(gaussian_filter(m.numpy(), sigma=4)) for m in raw])
    torch.testing.assert_close(smoothed, expected)


# ----------------------------------------------------------------------------- parts and switches
def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("embed", "zero", "total"), [(768, 0.6, 1.8), (640, 0.4, 1.4)])
def test_learnable_parameters_match_the_papers_table_3(embed, zero, total):
    """ViT-L/14@336 (768-d): "427.9 + 0.6" zero-shot, "+ 1.8" one-shot; ViT-B-16+ (640-d): "+ 0.4", "+ 1.4"."""
    cfg = AdaptCLIPConfig()
    parts = build_parts(cfg, acl._switches(cfg), embed, embed, 4, seed=0)
    assert round((count(parts["visual"]) + count(parts["textual"])) / 1e6, 1) == zero
    assert round(count(parts) / 1e6, 1) == total
    per_layer = build_parts(replace(cfg, head_sharing="per_layer"), acl._switches(cfg), embed, embed, 4, seed=0)
    assert count(per_layer["pqa"]) - count(parts["pqa"]) == 3 * (count(parts["pqa"].seg) + count(parts["pqa"].image))


def test_ablation_lines_set_the_switches(ctx):
    lines = {k: AdaptCLIP(AdaptCLIPConfig(ablation=k)) for k in acl.ABLATIONS}
    assert not lines[0].trainable
    assert all(m.trainable for k, m in lines.items() if k)
    assert lines[3].switches.joint
    assert not lines[4].switches.joint
    assert not lines[5].switches.context
    assert lines[6].switches.context
    b = batch(seed=1)
    for k, names in {0: ["clip"], 1: ["textual"], 2: ["visual"], 3: ["joint"], 4: ["visual", "textual"]}.items():
        m = method(ctx, ablation=k)
        with torch.no_grad():
            assert sorted(m.zero_shot_branches(m.image_features(b), SIZE)) == sorted(names)
        if k in (0, 3):
            assert m.predict(b).anomaly_maps.shape == (2, SIZE, SIZE)
    with pytest.raises(ValueError, match="shots > 0"):
        method(ctx, ablation=6).predict(b)
    with pytest.raises(ValueError, match="prompt-query adapter"):
        method(ctx, ablation=4).set_references(b)
    with pytest.raises(ValueError, match="joint needs both"):
        AdaptCLIP(AdaptCLIPConfig(learning="joint", textual_adapter=False))
    with pytest.raises(ValueError, match="Table 5"):
        AdaptCLIP(AdaptCLIPConfig(ablation=8))


def grads(loss, params) -> list[bool]:
    """Whether each parameter receives a non-zero gradient from ``loss``."""
    found = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [g is not None and bool(g.abs().sum() > 0) for g in found]


def test_alternating_and_joint_learning_differ_in_what_each_branch_sees(ctx):
    b = batch(labels=True, seed=2)
    m = method(ctx)
    m.set_training(True)
    va, ta, pq = (list(m.parts[k].parameters()) for k in ("visual", "textual", "pqa"))
    losses = {k: sum(v.values()) for k, v in m.branch_losses(b).items()}
    assert sorted(losses) == ["pqa", "textual", "visual"]
    assert all(grads(losses["visual"], va))
    assert not any(grads(losses["visual"], ta + pq))
    assert all(grads(losses["textual"], ta))
    assert not any(grads(losses["textual"], va + pq))
    assert not any(grads(losses["pqa"], va + ta))
    joint = method(ctx, learning="joint")
    joint.set_training(True)
    va, ta = (list(joint.parts[k].parameters()) for k in ("visual", "textual"))
    losses = {k: sum(v.values()) for k, v in joint.branch_losses(b).items()}
    assert sorted(losses) == ["joint", "pqa"]
    assert all(grads(losses["joint"], va + ta))  # adapted vision against the learned text


def test_branches_score_the_frozen_features_against_the_right_text(ctx):
    m = method(ctx)
    b = batch(seed=4)
    bb = ctx.backbone
    feats = m.image_features(b)
    ref = bb.vv_tokens(b.images, [6, 12, 18, 24], 6, norm=True, proj=True)
    assert torch.equal(feats["local"], ref.vv[24])
    assert torch.equal(feats["global"], ref.cls @ bb.model.visual.proj)
    with torch.no_grad():
        out = m.zero_shot_branches(feats, SIZE)
        text = m.learned_text()
        static = m.static_text()
    tok = F.normalize(ref.vv[24][:, 1:], dim=-1)
    probs = (tok @ text.T / 0.07).softmax(-1).transpose(1, 2).reshape(2, 2, 4, 4)
    torch.testing.assert_close(out["textual"][0], F.interpolate(probs, (SIZE, SIZE), mode="bilinear"))
    glob = F.normalize(feats["global"], dim=-1)
    torch.testing.assert_close(out["textual"][1], glob @ text.T / 0.07)
    with torch.no_grad():
        adapted = m.parts["visual"].global_mlp(feats["global"])
    torch.testing.assert_close(out["visual"][1], F.normalize(adapted, dim=-1) @ static.T / 0.07)


def test_static_text_is_the_unnormalised_mean_of_the_winclip_ensemble(ctx):
    from zsad_bench.prompts import WINCLIP_ANOMALOUS_STATES, WINCLIP_NORMAL_STATES, WINCLIP_TEMPLATES_ANOMALIB

    m = method(ctx)
    bb = ctx.backbone
    normal = [t.format(s.format("object")) for s in WINCLIP_NORMAL_STATES for t in WINCLIP_TEMPLATES_ANOMALIB]
    anomalous = [t.format(s.format("object")) for s in WINCLIP_ANOMALOUS_STATES for t in WINCLIP_TEMPLATES_ANOMALIB]
    assert (len(normal), len(anomalous)) == (147, 84)
    expected = torch.stack([F.normalize(bb.encode_text(x).mean(0), dim=0) for x in (normal, anomalous)])
    torch.testing.assert_close(m.static_text(), expected, rtol=1e-5, atol=1e-6)


def test_learned_prompts_replace_the_twelve_placeholder_rows(ctx):
    m = method(ctx)
    bb = ctx.backbone
    tokens = bb.tokenize(["X X X X X X X X X X X X ."])
    assert int(tokens[0].argmax()) == 14  # SOT, 12 × X, ".", EOT
    emb = bb.token_embeddings(tokens).repeat(2, 1, 1)
    emb[0, 1:13], emb[1, 1:13] = m.parts["textual"].normal.detach(), m.parts["textual"].anomalous.detach()
    with torch.no_grad():
        expected = F.normalize(bb.encode_token_embeddings(emb, torch.tensor([14, 14])), dim=-1)
        first = m.learned_text()
        assert m.learned_text() is first  # memoised
        torch.testing.assert_close(first, expected)
        m.parts["textual"].normal.add_(1.0)
        assert not torch.equal(m.learned_text(), first)  # recomputed after a change


def test_the_query_as_its_own_reference_gives_a_zero_align_map(ctx):
    m = method(ctx)
    b = batch(n=1, seed=5)
    m.set_references(b)
    feats = m.image_features(b)
    with torch.no_grad():
        for _, _, align in m.pqa_layers(feats, m._memory["bottle"], SIZE):
            assert float(align.abs().max()) < 1e-6
        _, _, index = nearest_prompt_tokens(feats["patches"][24], m._memory["bottle"][24])
    assert index[0].tolist() == list(range(16))  # every patch finds itself
    pred = m.predict(b)  # the harmonic mean with a zero align map is zero everywhere
    assert float(pred.anomaly_maps.abs().max()) < 1e-5
    assert float(pred.image_scores.abs().max()) < 1e-5
    m.set_references(batch(n=2, seed=6))  # other references: a positive align map
    assert float(m.predict(b).anomaly_maps.min()) > 0
    m.clear_references()
    zero = m.predict(b)
    assert float(zero.image_scores[0]) > 0


def test_single_image_training_batch_keeps_batchnorm_working(ctx):
    m = method(ctx)
    m.set_training(True)
    before = m.parts["visual"].global_mlp.norm.running_mean.clone()
    one = batch(n=2, labels=True, seed=7)
    one = Batch(one.images[1:], one.records[1:], one.class_names[1:], one.labels[1:], one.masks[1:])
    one.records = [replace(one.records[0], label=0)]
    one.labels = torch.tensor([0])
    terms = m.training_step(one)  # the only normal image is its own prompt (prompt_source=batch)
    assert all(torch.isfinite(v) for v in terms.values())
    assert torch.equal(m.parts["visual"].global_mlp.norm.running_mean, before)  # one row: running stats used


# ----------------------------------------------------------------------------- data, training, checkpoints
@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from zsad_bench.synth import AUX_CATEGORIES, TEST_CATEGORIES, SynthSpec, ensure_synth

    root = tmp_path_factory.mktemp("data")
    ensure_synth(root / "synth_aux", SynthSpec(AUX_CATEGORIES, seed=1))
    ensure_synth(root / "synth", SynthSpec(TEST_CATEGORIES, seed=0))
    return root


@pytest.fixture(scope="module")
def aux_batches(synth_root):
    """synth_aux's test split decoded at 64 px, 6 images per category, batches of 8."""
    from zsad_bench.auxdata import AuxDataset, build_aux, to_batch

    aux = build_aux([{"name": "synth_aux"}], {"data_root": str(synth_root)}, "test", 6)
    data = AuxDataset(aux, {"input_size": SIZE, "interpolation": "bicubic"})
    items = [data[i] for i in range(len(data))]
    return [to_batch(items[i : i + 8], aux, torch.device("cpu")) for i in range(0, len(items), 8)]


def test_training_prompts_are_seeded_normal_train_images_of_the_querys_class(ctx, synth_root, aux_batches):
    m = method(ctx, data_root=str(synth_root))
    query = aux_batches[0].records[0]
    seed_all(10)
    first = [m._draw_train(query) for _ in range(30)]
    seed_all(10)
    assert [m._draw_train(query) for _ in range(30)] == first  # reproducible from the trainer's seed
    assert len({r.key for r in first}) > 1  # re-drawn, not fixed per query
    test_paths = {r.image_path for r in aux_batches[0].records}
    for r in first:
        assert (r.split, r.label, r.category, r.dataset) == ("train", 0, query.category, "synth_aux")
        assert r.image_path not in test_paths
        assert r.image_path.is_relative_to(synth_root / "synth_aux" / query.category / "train")
    elsewhere = SampleRecord(synth_root / "x.png", 1, None, "bottle", "broken_large", "test", "mvtec_ad")
    with pytest.raises(FileNotFoundError, match=r"prompt_roots\.mvtec_ad"):
        method(ctx, data_root=str(synth_root / "nowhere"))._draw_train(elsewhere)


def test_shot_sampling_is_reproducible_per_seed_and_never_a_test_image(synth_root):
    from zsad_bench.registry import DATASETS
    from zsad_bench.shots import sample_shots

    family = DATASETS.get("synth")()
    train = family.records(synth_root / "synth", "bottle_like", "train")
    test = family.records(synth_root / "synth", "bottle_like", "test")
    draws = {seed: [r.key for r in sample_shots(train, 4, seed, test)] for seed in (10, 20, 30)}
    assert draws == {seed: [r.key for r in sample_shots(train, 4, seed, test)] for seed in (10, 20, 30)}
    assert len({tuple(v) for v in draws.values()}) > 1
    test_keys = {r.key for r in test}
    assert all(k not in test_keys and "/train/good/" in k for v in draws.values() for k in v)


def branch_means(m, batches) -> dict[str, float]:
    totals: dict[str, float] = {}
    with torch.no_grad():
        for b in batches:
            torch.manual_seed(0)  # the same prompt draws before and after training
            for name, terms in m.branch_losses(b).items():
                totals[name] = totals.get(name, 0.0) + float(sum(terms.values())) / len(batches)
    return totals


def test_a_few_training_steps_on_synth_lower_each_branchs_loss(ctx, synth_root, aux_batches):
    from zsad_bench.train import TrainRecipe, fit_batches

    m = method(ctx, data_root=str(synth_root))
    m.set_training(True)  # measured with batch statistics, as trained
    before = branch_means(m, aux_batches)
    losses = fit_batches(m, aux_batches, TrainRecipe(epochs=3, batch_size=8, lr=1e-3, betas=(0.5, 0.999), seed=10))
    m.set_training(True)
    after = branch_means(m, aux_batches)
    assert len(losses) == 3
    assert all(math.isfinite(x) for x in losses)
    assert m.prompt_draws > 0
    for name in ("visual", "textual", "pqa"):
        assert after[name] < before[name] - 0.02, (name, before, after)


def test_cached_epochs_never_run_the_encoder_for_queries_or_prompts(synth_root, aux_batches, tmp_path):
    from zsad_bench.registry import DATASETS
    from zsad_bench.shots import reference_batch
    from zsad_bench.train import TrainRecipe, fit_batches

    cached = Context(device="cpu", seed=0, backbone_cfg=TINY, cache=FeatureCache(tmp_path, dtype="fp32"))
    m = method(cached, data_root=str(synth_root))
    pools = DATASETS.get("synth_aux")()
    spec = m._pool(aux_batches[0].records[0])[1]
    for cat in {r.category for b in aux_batches for r in b.records}:  # warm: every prompt candidate once
        train = [r for r in pools.records(synth_root / "synth_aux", cat, "train") if r.label == 0]
        cached.features(reference_batch(train, spec, cat), m.feature_spec())
    recipe = TrainRecipe(epochs=1, batch_size=8, seed=10)
    fit_batches(m, aux_batches, recipe)  # fills the queries' entries
    calls = cached.backbone.forward_calls
    fit_batches(m, aux_batches, replace(recipe, epochs=2))
    assert cached.backbone.forward_calls == calls


def test_learnable_state_round_trips_through_safetensors(ctx, tmp_path):
    m = method(ctx)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in m.parts.state_dict().values():
            if t.is_floating_point():
                t.add_(0.1 * torch.rand(t.shape, generator=g))  # parameters and BatchNorm statistics
    state = m.learnable_state()
    assert "pqa.seg.0.0.weight" in state
    assert "pqa.seg.1.0.weight" not in state
    assert "pqa.norms.3.running_var" in state
    assert "visual.local_mlp.norm.running_mean" in state
    save_state(tmp_path / "a.safetensors", state)
    fresh = method(ctx)
    b, refs = batch(seed=8), batch(seed=9)
    assert not torch.equal(fresh.predict(b).anomaly_maps, m.predict(b).anomaly_maps)
    fresh.load_learnable_state(load_state(tmp_path / "a.safetensors"))
    for model in (m, fresh):
        model.set_references(refs)
    for a, c in ((fresh.predict(b), m.predict(b)),):
        torch.testing.assert_close(a.anomaly_maps, c.anomaly_maps, rtol=0, atol=0)
        torch.testing.assert_close(a.image_scores, c.image_scores, rtol=0, atol=0)


def trainer_cfg(root: Path, tmp: Path, seed: int, shots: int):
    from omegaconf import OmegaConf

    train = OmegaConf.load(str(resources.files("zsad_bench.conf") / "train" / "default.yaml"))
    return OmegaConf.create({
        "method": {"name": "adaptclip", "data_root": str(root)},
        "backbone": TINY,
        "dataset": {"name": "synth", "categories": "all", "root": str(root / "synth"), "aux": "synth_aux"},
        "train": OmegaConf.merge(train, {"progress": False, "epochs": 1, "max_steps": 2, "max_per_category": 4}),
        "paths": {"data_root": str(root), "weights_root": str(tmp / "w"), "results_root": str(tmp / "r")},
        "seed": seed,
        "shots": shots,
    })  # fmt: skip


def test_one_trained_model_stored_by_tag_serves_every_shot_count(synth_root, tmp_path):
    from zsad_bench.registry import DATASETS
    from zsad_bench.shots import reference_batch, sample_shots
    from zsad_bench.train import train_or_load

    first = Context(device="cpu", seed=10, backbone_cfg=TINY)
    trained = method(first, data_root=str(synth_root))
    record = train_or_load(trained, trainer_cfg(synth_root, tmp_path, 10, 0), first)
    assert (record.tag, record.status, record.steps) == ("adaptclip.synth_aux", "trained", 2)
    state = {k: v.clone() for k, v in trained.learnable_state().items()}
    family = DATASETS.get("synth")()
    train = family.records(synth_root / "synth", "pill_like", "train")
    test = family.records(synth_root / "synth", "pill_like", "test")[:3]
    spec = trained._pool(record_of(family, synth_root))[1]
    queries = reference_batch(test, spec, "pill like")
    maps = {}
    for shots, seed in [(0, 10), (1, 10), (2, 20), (4, 30)]:
        ctx = Context(device="cpu", seed=seed, backbone_cfg=TINY)
        again = method(ctx, data_root=str(synth_root))
        assert train_or_load(again, trainer_cfg(synth_root, tmp_path, seed, shots), ctx).status == "loaded"
        assert all(torch.equal(again.learnable_state()[k], v) for k, v in state.items())
        if shots:
            again.set_references(reference_batch(sample_shots(train, shots, seed, test), spec, "pill like"))
        pred = again.predict(queries).validate(3)
        assert torch.isfinite(pred.anomaly_maps).all()
        maps[shots] = pred.anomaly_maps
    assert not torch.equal(maps[0], maps[1])
    assert not torch.equal(maps[1], maps[4])


def record_of(family, root: Path) -> SampleRecord:
    return family.records(root / "synth", "pill_like", "test")[0]


# ----------------------------------------------------------------------------- configs
EXPERIMENTS = ["adaptclip_table1", "adaptclip_table2", "adaptclip_ablation"]


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="zsad_bench.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose_and_build(name):
    from omegaconf import OmegaConf

    from zsad_bench.build import build_method

    cfg = compose([f"experiment={name}"])
    assert cfg.method.name == "adaptclip"
    assert cfg.backbone.name == "clip_vit_l14_336"
    assert (cfg.backbone.activation, cfg.backbone.pos_interp) == ("quick_gelu", "bilinear")
    params = dict(cfg.hydra.sweeper.params)
    assert "dataset" in params
    for value in str(params.get("method.ablation", "7")).split(","):
        job = compose([f"experiment={name}", f"method.ablation={value}", "dataset=mvtec_ad"])
        OmegaConf.to_container(job.method, resolve=True)
        m = build_method(job.method)
        assert isinstance(m, AdaptCLIP)
        if name == "adaptclip_ablation":
            assert int(job.shots) == (1 if int(value) >= 5 else 0)
            assert m.switches.pqa == (int(value) >= 5)


def test_table_experiments_sweep_the_papers_shots_seeds_and_datasets():
    t1 = dict(compose(["experiment=adaptclip_table1"]).hydra.sweeper.params)
    t2 = dict(compose(["experiment=adaptclip_table2"]).hydra.sweeper.params)
    for params in (t1, t2):
        assert params["shots"] == "0,1,2,4"
        assert params["seed"] == "10,20,30"
    assert set(t1["dataset"].split(",")) >= {"mvtec_ad", "visa", "btad", "mvtec_3d", "dtd_synthetic", "ksdd",
                                             "mpdd", "real_iad", "br35h", "covid19"}  # fmt: skip
    assert {"kvasir", "endo"} <= set(t2["dataset"].split(","))


def test_method_yaml_matches_the_config_defaults():
    cfg = compose(["method=adaptclip"])
    from omegaconf import OmegaConf

    yaml = OmegaConf.to_container(cfg.method, resolve=True)
    defaults = AdaptCLIPConfig()
    for key, value in yaml.items():
        if key != "data_root":
            assert getattr(defaults, key) == value, key


# ----------------------------------------------------------------------------- the real architecture
@pytest.mark.slow
def test_real_vit_l14_336_architecture_parameters_and_a_step():
    """ViT-L-14-336 with random weights at 518 (37x37): the learnable parameters and one few-shot step."""
    cfg = {"name": "clip_vit_l14_336", "weights": "random", "activation": "quick_gelu", "pos_interp": "bilinear"}
    context = Context(device="cpu", seed=0, backbone_cfg=cfg)
    m = method(context)
    assert round(sum(p.numel() for p in m.parameters_to_train()) / 1e6, 1) == 1.8
    g = torch.Generator().manual_seed(0)
    recs = [SampleRecord(Path(f"r{i}.png"), i, None, "x", "d", "test", "f") for i in range(2)]
    b = Batch(torch.randn(2, 3, 518, 518, generator=g), recs, ["x"] * 2, torch.tensor([0, 1]), torch.zeros(2, 518, 518))
    b.masks[1, 100:200, 100:200] = 1
    m.set_training(True)
    terms = m.training_step(b)
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in m.parameters_to_train())
    m.set_training(False)
    m.set_references(Batch(b.images[:1], recs[:1], ["x"]))
    assert m.predict(b).anomaly_maps.shape == (2, 518, 518)
