"""TRT: the masked softmax, token selection, importance weights and preliminary attention against
independent references; the two training stages; the explainer's contract, ablations and errors."""
import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from conftest import tiny_vit
from tscam_explain import (TRT, TRTExplainer, TSCAMExplainer, create_trt, create_tscam, load_model, make_explainer,
                           save_model)
from tscam_explain.models.trt import (TokenSelection, cdf_selection, importance_weights, masked_softmax,
                                      refine_attention, threshold_selection, top_k_selection)
from tscam_explain.vit import block_forward_with_softmax

TINY_TRT = dict(img_size=32, patch_size=8, depth=3, embed_dim=64, num_heads=2)


def tiny_trt(name="deit_tiny_patch16_224", num_classes=5, u=0.65, **overrides):
    torch.manual_seed(0)
    return create_trt(name, num_classes=num_classes, u=u, **{**TINY_TRT, **overrides}).eval()


def images(batch=3, height=32, width=32, seed=1):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# -- the masked softmax ----------------------------------------------------------------------------

def dense_masked_softmax(scores, selection):
    """Reference: −inf outside G_ij = b_j or i == j, then the ordinary softmax."""
    count = scores.shape[-1]
    visible = selection[:, None, None, :] | torch.eye(count, dtype=torch.bool)
    return scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)


def test_masked_softmax_without_eps_equals_dense_masked_softmax():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 3, 10, 10, generator=generator) * 3
    selection = torch.rand(4, 10, generator=generator) > 0.5
    selection[0] = False  # empty: every query sees only itself
    selection[1] = True  # full: the ordinary softmax
    ours = masked_softmax(scores, selection, eps=0.0)
    torch.testing.assert_close(ours, dense_masked_softmax(scores, selection), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours[0], torch.eye(10).expand(3, 10, 10))
    torch.testing.assert_close(ours[1], scores[1].softmax(dim=-1))


def test_masked_softmax_eps_matches_formula_and_stays_finite():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 2, 6, 6, generator=generator, dtype=torch.float64)
    selection = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    visible = (selection[:, None, None, :] | torch.eye(6, dtype=torch.bool)).double()
    shifted = (scores - scores.amax(-1, keepdim=True)).exp() * visible
    expected = (shifted + 1e-6 / 6) / (shifted.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(masked_softmax(scores, selection).double(), expected, rtol=1e-6, atol=1e-9)
    # an unselected key dominates every row: everything the query may see underflows to 0
    extreme = torch.zeros(1, 1, 4, 4)
    extreme[..., 0] = 1e4
    keep_last = torch.tensor([[False, False, False, True]])
    assert torch.isnan(masked_softmax(extreme, keep_last, eps=0.0)[0, 0, 1:]).all()  # why ε is there
    stabilised = masked_softmax(extreme, keep_last)
    assert torch.isfinite(stabilised).all()
    torch.testing.assert_close(stabilised.sum(-1), torch.ones(1, 1, 4))


def test_masked_softmax_rejects_a_selection_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"selection must be \(B, N\)"):
        masked_softmax(torch.zeros(2, 1, 5, 5), torch.ones(2, 4, dtype=torch.bool))


def test_block_forward_with_softmax_reproduces_the_timm_block():
    vit = tiny_vit(depth=1, qk_norm=True, init_values=0.5)  # q/k norms and layer scale on the path
    block = vit.blocks[0]
    tokens = torch.randn(2, 7, 64)
    with torch.no_grad():
        torch.testing.assert_close(block_forward_with_softmax(block, tokens, lambda s: s.softmax(-1)), block(tokens),
                                   rtol=1e-5, atol=1e-5)


def test_reattention_with_every_token_selected_is_the_copied_block():
    model = tiny_trt()
    patches = torch.randn(2, 16, 64)
    every = torch.ones(2, 16, dtype=torch.bool)
    with torch.no_grad():
        reattended = model.reattention(patches, every)
        torch.testing.assert_close(reattended, model.backbone.blocks[-1](patches), rtol=1e-4, atol=1e-4)
        # and masking changes the result
        assert not torch.allclose(model.reattention(patches, every.logical_not()), reattended, atol=1e-3)


# -- token selection -------------------------------------------------------------------------------

def brute_force_cdf(attention, u):
    """b_i = [ Σ_{j: m_j ≥ m_i} m_j < u ], token by token, in float64."""
    rows = attention.double().tolist()
    return torch.tensor([[sum(v for v in row if v >= value) < u for value in row] for row in rows])


def official_cdf(attention, u):
    """The official reading: sort descending, cumulative sum, keep while below u, scatter back."""
    values, order = attention.sort(dim=-1, descending=True)
    return torch.zeros_like(attention, dtype=torch.bool).scatter(-1, order, values.cumsum(-1) < u)


def dyadic_attention(rows, tokens, seed, concentration=1.0):
    """Random m with entries k/1024 (Σ k = 1024): exact in float32, so sums have no rounding; many ties."""
    generator = torch.Generator().manual_seed(seed)
    probabilities = torch.rand(rows, tokens, generator=generator) ** concentration
    counts = torch.stack([torch.multinomial(p, 1024, replacement=True, generator=generator).bincount(minlength=tokens)
                          for p in probabilities])
    return counts.float() / 1024


@pytest.mark.parametrize("u", [0.25, 0.5, 0.65, 0.95, 1.0])
def test_cdf_selection_equals_the_brute_force_definition(u):
    attention = dyadic_attention(rows=6, tokens=40, seed=3)  # ~25 per token: ties are frequent
    assert any(len(set(row.tolist())) < 40 for row in attention)
    ours = cdf_selection(attention, u)
    assert torch.equal(ours, brute_force_cdf(attention, u))
    assert ours.any(dim=-1).all() or u <= 0.25


def test_cdf_selection_agrees_with_the_official_rule_without_ties():
    attention = torch.rand(5, 50, generator=torch.Generator().manual_seed(4)).softmax(-1)
    for u in (0.3, 0.6, 0.9):
        assert torch.equal(cdf_selection(attention, u), official_cdf(attention, u))


def test_cdf_selection_keeps_or_drops_tied_tokens_together():
    attention = torch.tensor([[0.3, 0.3, 0.2, 0.1, 0.1]])
    # cumulative masses 0.6, 0.6, 0.8, 1.0, 1.0: with u = 0.5 the tie at the top crosses u as a group
    assert not cdf_selection(attention, 0.5).any()
    assert cdf_selection(attention, 0.7).tolist() == [[True, True, False, False, False]]


def test_cdf_selection_is_empty_when_one_token_holds_all_the_mass():
    one_hot = torch.zeros(2, 16)
    one_hot[0, 5] = one_hot[1, 0] = 1.0
    for u in (0.1, 0.65, 1.0):
        assert not cdf_selection(one_hot, u).any()
        assert torch.equal(cdf_selection(one_hot, u), brute_force_cdf(one_hot, u))


def test_top_k_and_threshold_selection_follow_their_definitions():
    attention = dyadic_attention(rows=4, tokens=30, seed=5)
    for k in (0, 1, 7, 30, 45):
        chosen = top_k_selection(attention, k)
        assert (chosen.sum(-1) == min(k, 30)).all()
        if 0 < k < 30:
            kept_min = attention.masked_fill(~chosen, 2.0).amin(-1)
            dropped_max = attention.masked_fill(chosen, -1.0).amax(-1)
            assert (kept_min >= dropped_max).all()
    for tau in (0.0, 0.3, 0.8, 1.0):
        expected = torch.tensor([[value > tau * max(row) for value in row] for row in attention.tolist()])
        assert torch.equal(threshold_selection(attention, tau), expected)
    assert not threshold_selection(attention, 1.0).any()


@pytest.mark.parametrize("strategy, value, error", [
    ("cdf", 0.0, ValueError), ("cdf", 1.5, ValueError), ("top_k", 2.5, ValueError), ("top_k", -1, ValueError),
    ("threshold", 1.2, ValueError), ("random", 0.5, ValueError), ("cdf", float("nan"), TypeError),
    ("top_k", True, TypeError)])
def test_token_selection_rejects_bad_parameters(strategy, value, error):
    with pytest.raises(error):
        TokenSelection(strategy, value)


# -- importance weights and the refined attention -------------------------------------------------

def test_importance_weights_equal_the_formula_and_stay_finite():
    generator = torch.Generator().manual_seed(6)
    scores = torch.randn(3, 12, generator=generator, dtype=torch.float64) * 2
    selection = torch.rand(3, 12, generator=generator) > 0.4
    numerator = scores.exp() * selection
    expected = numerator / (numerator.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(importance_weights(scores, selection).double(), expected, rtol=1e-5, atol=1e-7)
    huge = torch.tensor([[1000.0, -1000.0, 500.0, 0.0]])
    weights = importance_weights(huge, torch.tensor([[True, True, False, False]]))
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(importance_weights(huge, torch.zeros(1, 4, dtype=torch.bool)), torch.zeros(1, 4))


def test_refined_attention_redistributes_the_selected_mass():
    attention = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    selection = torch.tensor([[True, True, False, False]])
    importance = torch.tensor([[0.25, 0.75, 0.0, 0.0]])
    torch.testing.assert_close(refine_attention(attention, selection, importance),
                               torch.tensor([[0.175, 0.525, 0.2, 0.1]]))
    empty = torch.zeros_like(selection)
    torch.testing.assert_close(refine_attention(attention, empty, torch.zeros_like(attention)), attention)


# -- the model --------------------------------------------------------------------------------------

def eager_preliminary_attention(model, x):
    """Reference m: an eager-attention copy (fused_attn=False), full N×N matrices from attn_drop's input."""
    vit = copy.deepcopy(model.backbone)
    matrices = []
    for block in vit.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, inputs, _out: matrices.append(inputs[0]))
    with torch.no_grad():
        vit.forward_features(x)
    rows = [matrix[:, :, 0, vit.num_prefix_tokens:].mean(dim=1) for matrix in matrices[:-1]]  # blocks 1 … L−1
    total = torch.stack(rows).sum(0)
    return total / total.sum(-1, keepdim=True)


@pytest.mark.parametrize("name, overrides", [("deit_tiny_patch16_224", dict(qk_norm=True)),
                                             ("deit_tiny_distilled_patch16_224", {}),
                                             ("vit_small_patch14_reg4_dinov2", dict(dynamic_img_size=True))])
def test_preliminary_attention_equals_eager_attention(name, overrides):
    model = tiny_trt(name, **overrides)
    assert all(block.attn.fused_attn for block in model.backbone.blocks)  # the model keeps the fused path
    x = images(2, 32, 48) if overrides.get("dynamic_img_size") else images(2)
    with torch.no_grad():
        output = model.forward_parts(x)
    torch.testing.assert_close(output.attention, eager_preliminary_attention(model, x), rtol=1e-5, atol=1e-7)
    assert torch.equal(output.selection, cdf_selection(output.attention, model.u))


def test_tpsm_and_cam_branch_compose_as_defined():
    """Recompose the logits, M_C and r from the model's own modules, step by step."""
    model = tiny_trt(depth=4)
    x = images(2)
    vit = model.backbone
    with torch.no_grad():
        output = model.forward_parts(x)
        tokens = vit.patch_embed(x)
        tokens = vit._pos_embed(tokens)
        outputs = []
        for block in vit.blocks[:-1]:
            tokens = block(tokens)
            outputs.append(tokens)
        before_last, last = outputs[-2], outputs[-1]  # blocks L−2 and L−1
        patches = last[:, 1:]
        fusion = (output.importance[:, :, None] * patches).sum(1)
        pair = torch.stack([last[:, 0], fusion], dim=1)
        logits = model.head(vit.norm(vit.blocks[-1](pair))[:, 0])
        scores = model.importance_head(model.importance_norm(model.reattention(patches, output.selection)))[..., 0]
        numerator = scores.exp() * output.selection
        importance = numerator / (numerator.sum(-1, keepdim=True) + 1e-6)
        cam_tokens = model.cam_norm(model.cam_block(before_last))[:, 1:]
        cam_maps = model.cam_head.conv(cam_tokens.transpose(1, 2).reshape(2, 64, 4, 4))
    assert output.selection.any() and not output.selection.all()
    torch.testing.assert_close(output.logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.importance, importance, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(output.cam_maps, cam_maps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.cam_logits, cam_maps.mean(dim=(2, 3)))
    kept = (output.attention * output.selection).sum(-1, keepdim=True)
    refined = output.attention * ~output.selection + output.importance * kept
    torch.testing.assert_close(output.refined_attention, refined)


def test_new_blocks_start_as_copies_of_the_last_block():
    model = tiny_trt()
    last = model.backbone.blocks[-1].state_dict()
    for copied in (model.reattention.block, model.cam_block):
        for key, value in copied.state_dict().items():
            assert torch.equal(value, last[key])
            assert value.data_ptr() != last[key].data_ptr()
    torch.testing.assert_close(model.cam_norm.weight, model.backbone.norm.weight)


class CallLog:
    """Counts the calls of modules and the sequence length they saw."""

    def __init__(self, modules):
        self.calls = {name: [] for name in modules}
        self.handles = [module.register_forward_pre_hook(self._record(name)) for name, module in modules.items()]

    def _record(self, name):
        def hook(_module, inputs):
            self.calls[name].append(inputs[0].shape[1])
        return hook

    def release(self):
        for handle in self.handles:
            handle.remove()


def logged(model):
    modules = {f"block{i}": block for i, block in enumerate(model.backbone.blocks)}
    modules.update(reattention=model.reattention, cam_block=model.cam_block, importance=model.importance_head)
    return CallLog(modules)


def test_each_path_runs_only_what_it_needs():
    model = tiny_trt(depth=4)  # 16 patches + CLS
    x = images(2)
    log = logged(model)
    with TRTExplainer(model) as explainer:
        explainer.attribute(x)
    assert log.calls == {"block0": [17], "block1": [17], "block2": [17], "block3": [2], "reattention": [16],
                         "cam_block": [17], "importance": [16]}
    for stage, expected in ((1, {"block0": [17], "block1": [17], "block2": [17], "block3": [2], "reattention": [16],
                                 "cam_block": [], "importance": [16]}),
                            (2, {"block0": [17], "block1": [17], "block2": [], "block3": [], "reattention": [],
                                 "cam_block": [17], "importance": []})):
        log.calls = {name: [] for name in log.calls}
        model.set_stage(stage).train()
        model(x)
        assert log.calls == expected, stage
    log.release()


def test_stage_two_trains_only_the_cam_branch():
    model = tiny_trt(drop_path_rate=0.5)
    model.set_stage(2).train()
    stage1 = [p for module in model.stage1_modules() for p in module.parameters()]
    stage2 = [p for module in model.stage2_modules() for p in module.parameters()]
    assert len(stage1) + len(stage2) == len(list(model.parameters()))
    assert all(not part.training for module in model.stage1_modules() for part in module.modules())
    assert all(module.training for module in model.stage2_modules())
    logits = model(images(4))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is None and not p.requires_grad for p in stage1)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in stage2)
    assert any(p.grad.abs().sum() > 0 for p in stage2)
    # stage-1 features are deterministic in stage 2 despite drop path: the frozen part is in eval mode
    model.zero_grad(set_to_none=True)
    assert torch.equal(model.forward_parts(images(2), cam=False).logits, model.forward_parts(images(2), cam=False).logits)


def test_stage_one_trains_backbone_and_tpsm_only():
    model = tiny_trt().train()
    assert model.stage == 1
    logits = model(images(4))
    torch.testing.assert_close(logits, model.eval().forward_parts(images(4), cam=False).logits)  # no dropout here
    model.train()
    F.cross_entropy(model(images(4)), torch.tensor([0, 1, 2, 3])).backward()
    for module in model.stage1_modules():
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
    assert all(p.grad is None for module in model.stage2_modules() for p in module.parameters())
    with pytest.raises(ValueError, match="stage must be 1"):
        model.set_stage(3)


def test_empty_selection_gives_finite_logits_maps_and_gradients():
    model = tiny_trt(u=1e-6)  # nothing is ever kept: every token's cumulative mass exceeds u
    x = images(2)
    output = model.forward_parts(x)
    assert not output.selection.any()
    assert torch.isfinite(output.logits).all()
    assert torch.equal(output.importance, torch.zeros_like(output.importance))
    torch.testing.assert_close(output.refined_attention, output.attention)
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    maps = TRTExplainer(model)(x)
    assert np.isfinite(maps).all() and maps.max() == pytest.approx(1.0)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_trt(u=0.5)
    path = tmp_path / "trt.pt"
    save_model(model, path)
    loaded = load_model(path).eval()
    assert isinstance(loaded, TRT) and loaded.arch == "trt" and loaded.u == 0.5
    assert loaded.config == model.config
    x = images(2)
    with torch.no_grad():
        before, after = model.forward_parts(x), loaded.forward_parts(x)
    for field in ("logits", "cam_maps", "refined_attention"):
        torch.testing.assert_close(getattr(after, field), getattr(before, field), rtol=0, atol=0)
    state = torch.load(path, weights_only=True)
    assert state["arch"] == "trt" and state["config"]["u"] == 0.5


# -- the explainer ----------------------------------------------------------------------------------

def test_explainer_contract_and_numerics():
    model = tiny_trt()
    x = images(3)
    with TRTExplainer(model) as explainer:
        maps = explainer(x, targets=[ClassifierOutputTarget(1), 2, torch.tensor(4)])
        logits = explainer.outputs
        raw = explainer.attribute(x, [1, 2, 4], upsample=False)
        default = explainer(x)
        default_classes = explainer.outputs.argmax(-1)
        raw_default = explainer.attribute(x, upsample=False)
    assert maps.shape == (3, 32, 32) and maps.dtype == np.float32
    assert maps.min() == 0.0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    assert raw.shape == (3, 4, 4)
    with torch.no_grad():
        output = model.forward_parts(x)
    torch.testing.assert_close(logits, output.logits)
    expected = output.refined_attention * output.cam_maps[torch.arange(3), torch.tensor([1, 2, 4])].flatten(1)
    torch.testing.assert_close(raw, expected.view(3, 4, 4))
    expected_default = output.refined_attention * output.cam_maps[torch.arange(3), default_classes].flatten(1)
    torch.testing.assert_close(raw_default, expected_default.view(3, 4, 4))
    upsampled = F.interpolate(raw[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    low = upsampled.amin(dim=(1, 2), keepdim=True)
    np.testing.assert_allclose(maps, ((upsampled - low) / (upsampled.amax(dim=(1, 2), keepdim=True) - low)).numpy(),
                               atol=1e-6)
    assert default.shape == (3, 32, 32)
    # the recorder's hooks are gone after each call
    assert all(not block.attn.q_norm._forward_hooks for block in model.backbone.blocks)


def test_explainer_ablations():
    model = tiny_trt()
    x = images(2)
    targets = [0, 3]
    rows = torch.arange(2)
    with torch.no_grad():
        output = model.forward_parts(x)
        top3 = model.forward_parts(x, cam=False, selection=TokenSelection("top_k", 3))
    cam = output.cam_maps[rows, torch.tensor(targets)].flatten(1)
    without = TRTExplainer(model, reattention=False).attribute(x, targets, upsample=False)
    torch.testing.assert_close(without, (output.attention * cam).view(2, 4, 4))
    assert (top3.selection.sum(-1) == 3).all()
    by_top_k = TRTExplainer(model, top_k=3).attribute(x, targets, upsample=False)
    torch.testing.assert_close(by_top_k, (top3.refined_attention * cam).view(2, 4, 4))
    assert not torch.allclose(by_top_k, TRTExplainer(model).attribute(x, targets, upsample=False))
    assert TRTExplainer(model, threshold=0.5).selection == TokenSelection("threshold", 0.5)
    assert TRTExplainer(model, u=0.9).selection == TokenSelection("cdf", 0.9)
    assert TRTExplainer(model).selection == TokenSelection("cdf", 0.65)
    with pytest.raises(ValueError, match="at most one token selection"):
        TRTExplainer(model, u=0.5, top_k=3)


def test_eigen_smooth_and_aug_smooth():
    model = tiny_trt()
    x = images(2)
    explainer = TRTExplainer(model)
    plain = explainer.attribute(x, [1, 2], upsample=False)
    smoothed = explainer.attribute(x, [1, 2], upsample=False, eigen_smooth=True)
    assert torch.isfinite(smoothed).all() and not torch.allclose(smoothed, plain)
    # the sign is chosen to agree with the plain map
    assert ((smoothed - smoothed.mean()) * (plain - plain.mean())).sum() > 0
    augmented = explainer(x, [1, 2], aug_smooth=True)
    assert augmented.shape == (2, 32, 32) and np.isfinite(augmented).all()
    assert 0.0 <= augmented.min() and augmented.max() <= 1.0
    with pytest.raises(ValueError, match="needs upsample=True"):
        explainer.attribute(x, aug_smooth=True, upsample=False)


@pytest.mark.parametrize("name, overrides, size", [
    ("deit_tiny_distilled_patch16_224", {}, (32, 32)),
    ("vit_small_patch14_reg4_dinov2", {}, (32, 32)),
    ("deit_tiny_patch16_224", dict(img_size=224, patch_size=16, depth=2, dynamic_img_size=True), (224, 320)),
])
def test_variants_run(name, overrides, size):
    model = tiny_trt(name, **overrides)
    x = images(2, *size)
    grid = (size[0] // model.backbone.patch_embed.patch_size[0], size[1] // model.backbone.patch_embed.patch_size[1])
    maps = make_explainer("trt", model)(x, targets=[0, 1])
    assert maps.shape == (2, *size) and np.isfinite(maps).all()
    raw = TRTExplainer(model).attribute(x, upsample=False)
    assert raw.shape == (2, *grid)
    with torch.no_grad():
        assert model.forward_parts(x).cam_maps.shape == (2, 5, *grid)


def test_bad_input_gets_clear_errors():
    model = tiny_trt()
    explainer = TRTExplainer(model)
    with pytest.raises(TypeError, match=r"create_trt\(model_name, num_classes\)"):
        TRTExplainer(tiny_vit())
    with pytest.raises(TypeError, match="create_trt"):
        TRTExplainer(create_tscam("deit_tiny_patch16_224", num_classes=3, **TINY_TRT))
    with pytest.raises(TypeError, match="TRTExplainer"):
        TSCAMExplainer(model)
    with pytest.raises(ValueError, match="got 1 targets for a batch of 2"):
        explainer(images(2), targets=[0])
    with pytest.raises(ValueError, match="4-D"):
        explainer(images(1)[0])
    with pytest.raises(ValueError, match="4-D"):
        model(images(1)[0])
    with pytest.raises(ValueError, match="does not match the model's img_size"):
        explainer(images(1, 48, 48))
    with pytest.raises(ValueError, match="at least 2 blocks"):
        create_trt("deit_tiny_patch16_224", num_classes=3, **{**TINY_TRT, "depth": 1})
    with pytest.raises(TypeError, match="class token"):
        create_trt("vit_base_patch16_reg4_gap_256", num_classes=3, **TINY_TRT)
    with pytest.raises(ValueError, match="nothing to compute"):
        model.forward_parts(images(1), tpsm=False, cam=False)


def test_default_deit_small_call():
    """The issue's acceptance line, at DeiT-S size (random init)."""
    explainer = TRTExplainer(create_trt("deit_small_patch16_224", num_classes=200))
    maps = explainer(torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    assert maps.shape == (1, 224, 224) and explainer.outputs.shape == (1, 200)
    assert np.isfinite(maps).all()


def test_timm_kwargs_and_u_reach_the_model():
    model = create_trt("deit_tiny_patch16_224", num_classes=4, u=0.95, drop_path_rate=0.1, **TINY_TRT)
    assert model.config == dict(model_name="deit_tiny_patch16_224", num_classes=4, u=0.95, drop_path_rate=0.1,
                                **TINY_TRT)
    assert isinstance(model.backbone, timm.models.vision_transformer.VisionTransformer)
    assert model.head.out_features == 4 and model.cam_head.conv.out_channels == 4
