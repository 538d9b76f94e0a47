"""rollout, chefer and legrad: equal to eager references (fused attention off, full matrices, autograd) on
every token layout, with timm's fused attention kept; the pytorch-grad-cam contract; the model left as it was."""
import gc
import resource

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import eager_baselines as eager
from conftest import TINY, tiny_vit
from timm.models.vision_transformer import ResPostBlock

from tscam_explain import CheferExplainer, LeGradExplainer, RolloutExplainer, create_trt, create_tscam, make_explainer
from tscam_explain.explainers import list_explainers

EXPLAINERS = {"rollout": RolloutExplainer, "chefer": CheferExplainer, "legrad": LeGradExplainer}

pytestmark = pytest.mark.usefixtures("one_thread")


def layouts():
    """(label, model, images) for every token layout the issue names, each tiny."""
    generator = torch.Generator().manual_seed(3)
    square = torch.randn(2, 3, 64, 64, generator=generator)
    return [
        ("deit_tiny", lambda: tiny_vit(), square),
        ("deit_tiny_distilled", lambda: tiny_vit("deit_tiny_distilled_patch16_224"), square),
        ("reg_tokens=4", lambda: tiny_vit("vit_base_patch16_224", reg_tokens=4, no_embed_class=True), square),
        ("dynamic 224x320", lambda: tiny_vit(img_size=224, patch_size=16, dynamic_img_size=True),
         torch.randn(2, 3, 224, 320, generator=generator)),
        ("qk_norm", lambda: tiny_vit(qk_norm=True), square),
        # not timm's standard Block: the gradient methods re-run such blocks as modules
        ("ResPostBlock", lambda: tiny_vit(block_fn=ResPostBlock, init_values=0.5), square),
    ]


LAYOUTS = layouts()


def reference(name, model, images, classes, **options):
    if name == "rollout":
        return eager.rollout(eager.eager_copy(model), images, **options)
    return getattr(eager, name)(eager.eager_copy(model), images, classes, **options)


def assert_equal_to_float32_rounding(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding, relative to the map's own scale."""
    expected = expected.reshape(ours.shape)
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5 * scale)


def fused_attention_untouched(vit: nn.Module):
    """Counts calls of attn_drop, which timm's fused path never calls (the eager path does)."""
    calls = []
    handles = [block.attn.attn_drop.register_forward_hook(lambda *_: calls.append(1)) for block in vit.blocks]
    return calls, handles


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
@pytest.mark.parametrize("label, build, images", LAYOUTS, ids=[label for label, _, _ in LAYOUTS])
def test_maps_equal_eager_reference_with_fused_attention_kept(name, label, build, images):
    model = build()
    classes = [3, 7]
    calls, handles = fused_attention_untouched(model)
    with make_explainer(name, model) as cam:
        raw = cam.attribute(images, classes, upsample=False)
    for handle in handles:
        handle.remove()
    assert not calls and all(block.attn.fused_attn for block in model.blocks)
    prefix = model.num_prefix_tokens
    grid = (images.shape[-2] // model.patch_embed.patch_size[0], images.shape[-1] // model.patch_embed.patch_size[1])
    assert raw.shape == (2, *grid) and prefix == {"deit_tiny_distilled": 2, "reg_tokens=4": 5}.get(label, 1)
    assert_equal_to_float32_rounding(raw, reference(name, model, images, classes))


@pytest.mark.parametrize("options", [dict(head_fusion="max"), dict(head_fusion="min"),
                                     dict(discard_ratio=0.9), dict(head_fusion="max", discard_ratio=0.5)])
def test_rollout_options_equal_reference(options, images):
    model = tiny_vit("deit_tiny_distilled_patch16_224")
    with RolloutExplainer(model, **options) as cam:
        raw = cam.attribute(images, upsample=False)
    assert_equal_to_float32_rounding(raw, reference("rollout", model, images, None, **options))
    with RolloutExplainer(model) as cam:
        assert not torch.allclose(raw, cam.attribute(images, upsample=False))


def test_rollout_discards_exactly_the_smallest_entries_but_never_the_class_token_self_attention():
    from tscam_explain.explainers.rollout import discard_smallest
    fused = torch.tensor([[[0.0, 5.0], [1.0, 2.0]]])  # (0, 0) is the smallest entry
    discard_smallest(fused, 0.5)
    assert fused.tolist() == [[[0.0, 5.0], [0.0, 0.0]]]
    fused = torch.tensor([[[3.0, 5.0], [1.0, 2.0]]])
    discard_smallest(fused, 0.99)  # at most N² − 1 entries
    assert fused.tolist() == [[[3.0, 0.0], [0.0, 0.0]]]


@pytest.mark.parametrize("options", [dict(blocks=[-1]), dict(blocks=[0, -1]), dict(pooling="mean")])
def test_legrad_options_equal_reference(options, images):
    model = tiny_vit("deit_tiny_distilled_patch16_224", depth=3)
    with LeGradExplainer(model, **options) as cam:
        raw = cam.attribute(images, [1, 2, 3], upsample=False)
    assert_equal_to_float32_rounding(raw, reference("legrad", model, images, [1, 2, 3], **options))


def test_legrad_without_class_token_equals_reference_and_class_token_methods_refuse(images):
    model = tiny_vit(class_token=False, global_pool="avg")
    assert "legrad" in list_explainers(model)
    assert "rollout" not in list_explainers(model) and "chefer" not in list_explainers(model)
    with LeGradExplainer(model) as cam:
        raw = cam.attribute(images, [0, 4, 9], upsample=False)
    assert_equal_to_float32_rounding(raw, reference("legrad", model, images, [0, 4, 9]))
    for explainer in (RolloutExplainer, CheferExplainer):
        with pytest.raises(TypeError, match="class token"):
            explainer(model)


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_tscam_model_equals_reference(name, images):
    torch.manual_seed(0)
    model = create_tscam("deit_tiny_patch16_224", num_classes=5, **TINY).eval()
    assert name in list_explainers(model)
    with make_explainer(name, model) as cam:
        raw = cam.attribute(images, [0, 2, 4], upsample=False)
    assert_equal_to_float32_rounding(raw, reference(name, model, images, [0, 2, 4]))


def test_models_they_do_not_apply_to_are_refused():
    trt = create_trt("deit_tiny_patch16_224", num_classes=4, img_size=64, patch_size=8, depth=3, embed_dim=64,
                     num_heads=2)
    headless = tiny_vit(num_classes=0)
    for name, explainer in EXPLAINERS.items():
        assert name not in list_explainers(trt)
        with pytest.raises(TypeError, match="TRT"):
            explainer(trt)
    assert "rollout" in list_explainers(headless) and "chefer" not in list_explainers(headless)
    with pytest.raises(TypeError, match="no classifier"):
        CheferExplainer(headless)
    with pytest.raises(TypeError, match="pooling='mean'"):
        LeGradExplainer(create_tscam("deit_tiny_patch16_224", num_classes=5, **TINY), pooling="mean")
    with pytest.raises(ValueError, match="head_fusion"):
        RolloutExplainer(tiny_vit(), head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        RolloutExplainer(tiny_vit(), discard_ratio=1.0)
    with pytest.raises(ValueError, match="block index"):
        LeGradExplainer(tiny_vit(), blocks=[5])


def test_full_call_equals_reference_upsampled_and_normalised(images):
    """The contract's maps: bilinear upsampling of the raw map, then min-max, as cv2 does it."""
    model = tiny_vit()
    for name in EXPLAINERS:
        with make_explainer(name, model) as cam:
            maps = cam(images, [ClassifierOutputTarget(c) for c in (1, 5, 8)])
        raw = reference(name, model, images, [1, 5, 8]).reshape(3, 8, 8).numpy()
        expected = []
        for cam_map in raw:
            resized = cv2.resize(cam_map, (64, 64), interpolation=cv2.INTER_LINEAR)
            expected.append((resized - resized.min()) / (resized.max() - resized.min()))
        assert maps.dtype == np.float32 and maps.shape == (3, 64, 64)
        np.testing.assert_allclose(maps, np.stack(expected), atol=1e-4)


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_contract_targets_and_batch_equals_one_by_one(name, images):
    model = tiny_vit()
    with make_explainer(name, model) as cam:
        predicted = cam(images)
        top1 = cam.outputs.argmax(dim=1).tolist()
        assert not cam.outputs.requires_grad and cam.outputs.shape == (3, 10)
        np.testing.assert_array_equal(predicted, cam(images, top1))
        batch = cam(images, [2, 6, 9])
        single = np.concatenate([cam(images[i:i + 1], [c]) for i, c in enumerate([2, 6, 9])])
        smooth = cam(images, [2, 6, 9], aug_smooth=True)
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert smooth.shape == (3, 64, 64) and smooth.min() >= 0 and smooth.max() <= 1
    assert not np.allclose(smooth, batch)
    if name != "rollout":  # rollout is class-agnostic; the gradient methods are not
        assert not np.allclose(batch, cam(images, [(c + 1) % 10 for c in (2, 6, 9)]))
    with pytest.warns(UserWarning, match="eigen_smooth"):
        cam(images, eigen_smooth=True)


def _model_state(model: nn.Module):
    return ({name: value.clone() for name, value in model.state_dict().items()},
            [(name, id(p), p.requires_grad, p.grad) for name, p in model.named_parameters()],
            [(name, m.training, getattr(m, "fused_attn", None), len(m._forward_hooks), len(m._forward_pre_hooks),
              len(m._backward_hooks)) for name, m in model.named_modules()])


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_model_left_as_it_was_even_when_a_call_fails(name, images):
    model = tiny_vit("deit_tiny_distilled_patch16_224")
    model.train()
    model.blocks[0].requires_grad_(False)
    before = _model_state(model)
    with make_explainer(name, model) as cam:
        cam(images, [1, 2, 3])
        failing = model.blocks[1].register_forward_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            cam(images, [1, 2, 3])
        failing.remove()
    after = _model_state(model)
    assert before[1] == after[1] and before[2] == after[2]  # requires_grad, no .grad, modes, flags, hooks
    assert all(torch.equal(before[0][key], after[0][key]) for key in before[0])


@pytest.mark.parametrize("name", ["chefer", "legrad"])
@pytest.mark.parametrize("block_fn", [None, ResPostBlock], ids=["standard", "ResPostBlock"])
def test_gradient_methods_ignore_the_models_gradient_checkpointing(name, block_fn, images):
    """Each block is re-run on its own, outside the model's forward, so a model trained with gradient
    checkpointing gives the same maps, and the flag stays set."""
    model = tiny_vit(**({} if block_fn is None else dict(block_fn=block_fn)))
    with make_explainer(name, model) as cam:
        expected = cam.attribute(images, [1, 2, 3], upsample=False)
    model.set_grad_checkpointing(True)
    with make_explainer(name, model) as cam:
        torch.testing.assert_close(cam.attribute(images, [1, 2, 3], upsample=False), expected)
    assert model.grad_checkpointing


def _rss_mb() -> float:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * resource.getpagesize() / 2 ** 20


def test_hundred_with_loops_do_not_grow_memory_or_hooks(images):
    model = tiny_vit()
    image = images[:1]
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    names = sorted(EXPLAINERS)
    for loop in range(6):
        with make_explainer(names[loop % 3], model) as cam:
            cam(image)
    gc.collect()
    before = _rss_mb()
    for loop in range(100):
        with make_explainer(names[loop % 3], model) as cam:
            cam(image)
    gc.collect()
    assert _rss_mb() - before < 20
    assert hooks() == 0


@pytest.mark.parametrize("name, options", [("rollout", dict(head_fusion="max")), ("rollout", dict(head_fusion="min")),
                                           ("rollout", {})])
def test_one_head_at_a_time_equals_reference(name, options, images, monkeypatch):
    """Large inputs make rollout rebuild the attention in groups of heads; the result is the same."""
    import tscam_explain.vit as vit
    monkeypatch.setattr(vit, "HEAD_GROUP_ELEMENTS", 1)
    model = tiny_vit(num_heads=4)
    with make_explainer(name, model, **options) as cam:
        raw = cam.attribute(images, [1, 2, 3], upsample=False)
    assert_equal_to_float32_rounding(raw, reference(name, model, images, [1, 2, 3], **options))
