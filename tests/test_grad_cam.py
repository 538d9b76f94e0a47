"""pytorch-grad-cam's methods through make_explainer: names, refusals, the methods worked around for ViTs
(AblationCAM, ShapleyCAM) against independent references, frozen models, no "Exception ignored" noise."""
import copy
import gc
import sys

import cv2
import numpy as np
import pytest
import torch
from pytorch_grad_cam import AblationCAM, ShapleyCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from conftest import tiny_vit
from tscam_explain import create_trt, list_explainers, make_explainer
from tscam_explain.explainers import canonical_name
from tscam_explain.explainers.captum_attr import captum_explainer_names


@pytest.fixture
def unraisable(monkeypatch):
    """The "Exception ignored in …" messages raised while the test runs."""
    caught = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: caught.append(repr(info.exc_value)))
    return caught


def test_one_normalisation_serves_list_and_lookup(images):
    names = list_explainers()
    assert "kpcacam" in names and "kpca_cam" not in names
    # canonical names, except Captum's, which keep their dash (noisetunnel-saliency) and resolve from any spelling
    captum_names = set(captum_explainer_names())
    assert all(name == canonical_name(name) for name in names if name not in captum_names)
    assert captum_names <= set(names)
    model = tiny_vit()
    for spelling in ("kpca_cam", "KPCA-CAM", "kpcacam", "KPCA_CAM"):
        with make_explainer(spelling, model) as cam:
            assert type(cam).__name__ == "KPCA_CAM"
    assert set(list_explainers(model)) <= set(names)


def test_refusals_say_why_and_what_to_use(images):
    model = tiny_vit()
    assert "fullgrad" not in list_explainers() and "fullgrad" not in list_explainers(model)
    with pytest.raises(ValueError) as refused:
        make_explainer("FullGrad", model)
    assert "explainer 'FullGrad' does not apply to ViTs: pytorch-grad-cam's FullGrad ignores target_layers" in \
        str(refused.value)
    assert "every Linear and LayerNorm bias" in str(refused.value)
    assert str(refused.value).endswith("Use gradcam, layercam or tscam instead")
    trt = create_trt("deit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=3, embed_dim=32,
                     num_heads=2)
    hooks = sum(len(m._forward_hooks) for m in trt.modules())
    with pytest.raises(TypeError, match=r"'gradcam' does not apply to TRT: .*two tokens.*Explainers that apply "
                                        r"to it: \[.*'saliency', 'trt'\]"):
        make_explainer("gradcam", trt)
    assert sum(len(m._forward_hooks) for m in trt.modules()) == hooks
    with pytest.raises(TypeError, match=r"'tscam' does not apply to TRT"):
        make_explainer("tscam", trt)
    with pytest.raises(ValueError, match=r"unknown explainer 'gradcamm'; expected one of \["):
        make_explainer("gradcamm", model)


def test_empty_batch_is_refused_by_every_kind_of_explainer(images):
    model = tiny_vit()
    for name in ("tscam", "gradcam", "scorecam"):
        with make_explainer(name, model) as cam, pytest.raises(ValueError, match="empty batch"):
            cam(images[:0])


def _normalise(cam: np.ndarray) -> np.ndarray:
    cam = cam - cam.min()
    return cam / (1e-7 + cam.max())


def _finish(grid_maps, size) -> np.ndarray:
    """pytorch-grad-cam's map pipeline, written out: ReLU, min-max, resize, ReLU, min-max."""
    return np.stack([_normalise(np.maximum(cv2.resize(_normalise(np.maximum(cam, 0)), size[::-1]), 0))
                     for cam in grid_maps])


def _tokens_of(model, images):
    """The target layer's output (B, N, D) and the logits."""
    captured = {}
    handle = model.blocks[-1].norm1.register_forward_hook(lambda _m, _i, output: captured.update(tokens=output))
    try:
        logits = model(images)
    finally:
        handle.remove()
    return captured["tokens"], logits


def ablation_reference(model, images, classes):
    """AblationCAM by brute force: channel k of the patch tokens zeroed, one forward per channel."""
    prefix, layer = model.num_prefix_tokens, model.blocks[-1].norm1
    with torch.no_grad():
        tokens, logits = _tokens_of(model, images)
    batch, count, dim = tokens.shape
    side = int((count - prefix) ** 0.5)
    grids = []
    for b, c in enumerate(classes):
        drops = []
        for channel in range(dim):
            def ablate(_m, _i, output, channel=channel):
                output = output.clone()
                output[:, prefix:, channel] = 0
                return output

            handle = layer.register_forward_hook(ablate)
            with torch.no_grad():
                drops.append(model(images[b:b + 1])[0, c])
            handle.remove()
        weights = (logits[b, c] - torch.stack(drops)) / logits[b, c]
        activations = tokens[b, prefix:].T.reshape(dim, side, side)
        grids.append((weights[:, None, None] * activations).sum(0).numpy())
    return _finish(grids, images.shape[-2:])


def test_ablationcam_equals_brute_force_and_leaves_prefix_tokens_alone(images):
    model = tiny_vit("deit_tiny_distilled_patch16_224", depth=1)  # two prefix tokens
    classes = [1, 7, 4]
    target_layer = model.blocks[-1].norm1
    with make_explainer("ablationcam", model) as cam:
        assert isinstance(cam, AblationCAM)
        maps = cam(images, classes)
    np.testing.assert_allclose(maps, ablation_reference(model, images, classes), atol=1e-4)
    assert model.blocks[-1].norm1 is target_layer


def shapley_reference(model, images, classes):
    """ShapleyCAM's weights, mean over the grid of (gradient − ½ Hessian·activation), on an eager-attention copy."""
    eager = copy.deepcopy(model)
    for block in eager.blocks:
        block.attn.fused_attn = False
    prefix = model.num_prefix_tokens
    tokens, logits = _tokens_of(eager, images.clone().requires_grad_())
    loss = logits[torch.arange(len(classes)), classes].sum()
    gradient = torch.autograd.grad(loss, tokens, create_graph=True)[0]
    hessian_product = torch.autograd.grad(gradient, tokens, grad_outputs=tokens)[0]
    weights = (gradient - 0.5 * hessian_product)[:, prefix:].mean(dim=1)  # (B, D)
    side = int((tokens.shape[1] - prefix) ** 0.5)
    activations = tokens[:, prefix:].transpose(1, 2).reshape(len(classes), -1, side, side)
    grids = (weights[:, :, None, None] * activations).sum(1).detach().numpy()
    return _finish(grids, images.shape[-2:])


def test_shapleycam_equals_reference_and_keeps_fused_attention(images, unraisable):
    model = tiny_vit("vit_base_patch16_224", reg_tokens=4)
    classes = [2, 0, 9]
    with make_explainer("shapleycam", model) as cam:
        assert isinstance(cam, ShapleyCAM)
        maps = cam(images, classes)
    np.testing.assert_allclose(maps, shapley_reference(model, images, classes), atol=1e-4)
    assert all(block.attn.fused_attn for block in model.blocks)
    del cam
    gc.collect()
    assert not unraisable  # pytorch-grad-cam's own release raises "Can't detach views in-place" here


@pytest.mark.parametrize("name", ["gradcam", "layercam", "shapleycam", "scorecam"])
def test_frozen_model_under_no_grad_gives_the_same_maps(images, name):
    model = tiny_vit()
    with make_explainer(name, model) as cam:
        expected = cam(images, [1, 2, 3])
    model.requires_grad_(False)
    with torch.no_grad(), make_explainer(name, model) as cam:
        maps = cam(images, [1, 2, 3])
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_failed_construction_and_gc_are_quiet(images, unraisable):
    model = tiny_vit()
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    with pytest.raises(TypeError, match="unexpected keyword"):
        make_explainer("gradcam", model, not_an_option=1)
    gc.collect()
    assert not unraisable
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    make_explainer("layercam", tiny_vit(dynamic_img_size=True))(images, [0, 1, 2])  # released when collected
    gc.collect()
    assert not unraisable


def test_targets_given_as_ints_equal_classifier_output_targets(images):
    model = tiny_vit()
    with make_explainer("gradcam", model) as cam:
        as_ints = cam(images, [3, 1, 2])
        as_targets = cam(images, [ClassifierOutputTarget(c) for c in (3, 1, 2)])
        with pytest.raises(ValueError, match="2 targets for a batch of 3"):
            cam(images, [3, 1])
        with pytest.raises(TypeError, match="expected an int class index"):
            cam(images, [3, 1, "cat"])
    np.testing.assert_array_equal(as_ints, as_targets)
