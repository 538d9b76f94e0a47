"""TSCAMExplainer and friends: the pytorch-grad-cam contract, numerics against an independent
reference, targets, hooks, and interoperability with pytorch-grad-cam's utilities."""
import copy
import gc
import resource

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from pytorch_grad_cam import GradCAM, LayerCAM, ScoreCAM
from pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

from conftest import tiny_vit
from tscam_explain import (TransAttentionExplainer, TransCAMExplainer, TSCAMExplainer, create_tscam,
                           make_explainer)


@pytest.fixture
def tscam_model():
    torch.manual_seed(0)
    return create_tscam("deit_tiny_patch16_224", num_classes=6, img_size=64, patch_size=8, depth=3,
                        embed_dim=64, num_heads=2).eval()


def reference_tscam_maps(model, x, classes, blocks=None, mode="tscam"):
    """Independent reference: eager attention matrices, dense semantic maps, cv2 bilinear resize, numpy min-max."""
    eager = copy.deepcopy(model)
    vit = eager.backbone if hasattr(eager, "backbone") else eager
    rows = []
    for block in vit.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, attn: rows.append(attn[:, :, 0].mean(dim=1)))
    with torch.no_grad():
        if hasattr(eager, "forward_maps"):
            semantic = eager.forward_maps(x).semantic_maps  # (B, C, gh, gw)
        else:
            tokens = vit.forward_features(x)
            per_token = vit.head(vit.fc_norm(tokens[:, vit.num_prefix_tokens:]))  # every class, every token
            if getattr(vit, "head_dist", None) is not None:
                per_token = (per_token + vit.head_dist(vit.fc_norm(tokens[:, vit.num_prefix_tokens:]))) / 2
            side = int(per_token.shape[1] ** 0.5)
            semantic = per_token.transpose(1, 2).reshape(x.shape[0], -1, side, side)
    chosen = range(len(rows)) if blocks is None else blocks
    attention = sum(rows[i] for i in chosen)[:, vit.num_prefix_tokens:].reshape(semantic.shape[0], *semantic.shape[2:])
    out = []
    for b, c in enumerate(classes):
        cam = {"tscam": attention[b] * semantic[b, c], "transattention": attention[b],
               "transcam": semantic[b, c]}[mode].numpy()
        cam = cv2.resize(cam, (x.shape[-1], x.shape[-2]), interpolation=cv2.INTER_LINEAR)
        cam = cam - cam.min()
        out.append(cam / cam.max())
    return np.stack(out)


@pytest.mark.parametrize("mode, explainer_class", [("tscam", TSCAMExplainer), ("transattention", TransAttentionExplainer),
                                                   ("transcam", TransCAMExplainer)])
def test_maps_equal_independent_reference_on_tscam_model(tscam_model, images, mode, explainer_class):
    classes = [0, 3, 5]
    with explainer_class(tscam_model) as cam:
        maps = cam(images, [ClassifierOutputTarget(c) for c in classes])
    np.testing.assert_allclose(maps, reference_tscam_maps(tscam_model, images, classes, mode=mode), atol=2e-5)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_training_free_maps_on_plain_vit_equal_reference(name, images):
    model = tiny_vit(name)
    classes = [1, 2, 9]
    with TSCAMExplainer(model) as cam:
        maps = cam(images, classes)
    np.testing.assert_allclose(maps, reference_tscam_maps(model, images, classes), atol=2e-5)


def test_attention_block_selection_equals_reference(tscam_model, images):
    with TSCAMExplainer(tscam_model, attention_blocks=[-2, -1]) as cam:
        maps = cam(images, [1, 1, 1])
    np.testing.assert_allclose(maps, reference_tscam_maps(tscam_model, images, [1, 1, 1], blocks=[1, 2]), atol=2e-5)


@pytest.mark.parametrize("name", ["tscam", "transattention", "transcam", "gradcam", "layercam"])
def test_output_contract(name, images):
    model = tiny_vit()
    with make_explainer(name, model) as cam:
        maps = cam(images, None)
        assert isinstance(maps, np.ndarray) and maps.dtype == np.float32
        assert maps.shape == (3, 64, 64)
        assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
        assert np.allclose(maps.reshape(3, -1).max(axis=1), 1, atol=1e-5)
        assert cam.outputs.shape == (3, 10)


def test_tensor_path_stays_on_device_and_raw_grid(tscam_model, images):
    with TSCAMExplainer(tscam_model) as cam:
        maps = cam.attribute(images, [0, 1, 2])
        raw = cam.attribute(images, [0, 1, 2], upsample=False)
        numpy_maps = cam(images, [0, 1, 2])
    assert isinstance(maps, torch.Tensor) and maps.device == images.device and maps.shape == (3, 64, 64)
    assert raw.shape == (3, 8, 8) and raw.min() < 0  # raw maps are not normalised (no ReLU in TS-CAM)
    np.testing.assert_array_equal(maps.numpy(), numpy_maps)


def test_batch_equals_one_at_a_time(tscam_model, images):
    with TSCAMExplainer(tscam_model) as cam:
        batch = cam(images, [4, 0, 2])
        single = np.concatenate([cam(images[i:i + 1], [c]) for i, c in enumerate([4, 0, 2])])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_target_semantics(tscam_model, images):
    with TSCAMExplainer(tscam_model) as cam:
        predicted = cam(images)
        top1 = cam.outputs.argmax(dim=1).tolist()
        explicit = cam(images, top1)
        as_targets = cam(images, [ClassifierOutputTarget(c) for c in top1])
        softmax_targets = cam(images, [ClassifierOutputSoftmaxTarget(c) for c in top1])
        other = cam(images, [(c + 1) % 6 for c in top1])
    np.testing.assert_array_equal(predicted, explicit)
    np.testing.assert_array_equal(predicted, as_targets)
    np.testing.assert_array_equal(predicted, softmax_targets)
    assert not np.allclose(predicted, other)


@pytest.mark.parametrize("targets, error, message", [
    ([0, 1], ValueError, "2 targets for a batch of 3"),
    ([0, 1, 6], ValueError, "outside 0..5"),
    ([0, 1, "cat"], TypeError, "expected an int class index"),
])
def test_bad_targets(tscam_model, images, targets, error, message):
    with TSCAMExplainer(tscam_model) as cam, pytest.raises(error, match=message):
        cam(images, targets)


def test_bad_models_and_inputs(images):
    with pytest.raises(TypeError, match="expected a timm VisionTransformer"):
        TSCAMExplainer(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))
    with pytest.raises(TypeError, match="no linear classifier head"):
        TSCAMExplainer(tiny_vit(num_classes=0))
    with pytest.raises(ValueError, match="unknown explainer"):
        make_explainer("nope", tiny_vit())
    with TSCAMExplainer(tiny_vit()) as cam:
        with pytest.raises(ValueError, match="4-D"):
            cam(images[0])
        with pytest.raises(ValueError, match="channels"):
            cam(images[:, :2])
        with pytest.raises(ValueError, match="NaN"):
            cam(torch.full_like(images, float("nan")))


def test_nan_maps_raise_clear_error(tscam_model, images):
    with torch.no_grad():
        tscam_model.head.conv.bias.fill_(float("nan"))
    with TSCAMExplainer(tscam_model) as cam, pytest.raises(FloatingPointError, match="NaN"):
        cam(images, [0, 0, 0])


def test_exception_in_with_block_propagates_and_releases_hooks(tscam_model):
    with pytest.raises(RuntimeError, match="boom"):
        with TSCAMExplainer(tscam_model):
            raise RuntimeError("boom")
    assert not any(block.attn.k_norm._forward_hooks for block in tscam_model.backbone.blocks)


def _rss_mb() -> float:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * resource.getpagesize() / 2 ** 20


def test_hundred_with_loops_do_not_grow_memory_or_hooks(images):
    model = tiny_vit()
    for _ in range(10):  # warm up allocator caches
        with TSCAMExplainer(model) as cam:
            cam(images)
    gc.collect()
    before = _rss_mb()
    for _ in range(100):
        with TSCAMExplainer(model) as cam:
            cam(images)
    gc.collect()
    assert _rss_mb() - before < 20
    assert not any(block.attn.q_norm._forward_hooks or block.attn.k_norm._forward_hooks for block in model.blocks)


def test_aug_smooth_averages_deaugmented_views(tscam_model, images):
    with TSCAMExplainer(tscam_model) as cam:
        smooth = cam(images, [0, 1, 2], aug_smooth=True)
        # by hand: mean over flip x multiply of the (de-flipped) maps
        views = []
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                x = images.flip(-1) if flip else images
                m = cam(x * factor, [0, 1, 2])
                views.append(m[..., ::-1] if flip else m)
    assert smooth.shape == (3, 64, 64) and smooth.dtype == np.float32
    np.testing.assert_allclose(smooth, np.mean(views, axis=0), atol=1e-5)


def test_eigen_smooth_is_a_real_projection(tscam_model, images):
    with TSCAMExplainer(tscam_model) as cam:
        plain = cam(images, [0, 1, 2])
        smooth = cam(images, [0, 1, 2], eigen_smooth=True)
    assert smooth.shape == plain.shape and smooth.min() >= 0 and smooth.max() <= 1
    assert not np.allclose(plain, smooth)
    # the sign is chosen to agree with the plain map
    for p, s in zip(plain, smooth):
        assert np.corrcoef(p.ravel(), s.ravel())[0, 1] > 0
    with TransAttentionExplainer(tscam_model) as cam, pytest.warns(UserWarning, match="eigen_smooth"):
        cam(images, eigen_smooth=True)


def test_grad_cam_utilities_accept_our_maps(images):
    model = tiny_vit()
    with TSCAMExplainer(model) as cam:
        maps = cam(images, [1, 2, 3])
    rgb = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
    overlay = show_cam_on_image(rgb, maps[0], use_rgb=True)
    assert overlay.shape == (64, 64, 3) and overlay.dtype == np.uint8
    road = ROADMostRelevantFirst(percentile=80)
    scores = road(images, maps, [ClassifierOutputTarget(c) for c in (1, 2, 3)], model)
    assert np.asarray(scores).shape == (3,) and np.isfinite(scores).all()


def test_make_explainer_returns_grad_cam_objects_configured_for_vit(images):
    model = tiny_vit("vit_base_patch16_224", reg_tokens=4)
    for name, expected in [("gradcam", GradCAM), ("LayerCAM", LayerCAM), ("score-cam", ScoreCAM)]:
        with make_explainer(name, model) as cam:
            assert isinstance(cam, expected) and type(cam).__name__ == expected.__name__
            assert cam.target_layers == [model.blocks[-1].norm1]
            maps = cam(images[:1], None) if expected is not ScoreCAM else None
        if maps is not None:
            assert maps.shape == (1, 64, 64)
    tscam = create_tscam("deit_tiny_patch16_224", num_classes=4, img_size=64, patch_size=8, depth=2, embed_dim=64,
                         num_heads=2)
    with make_explainer("gradcam", tscam) as cam:
        assert cam.target_layers == [tscam.backbone.blocks[-1].norm1]
        assert cam(images, None).shape == (3, 64, 64)


def test_model_mode_is_restored_and_maps_are_of_the_eval_model(tscam_model, images):
    tscam_model.train()
    tscam_model.head.eval()  # a mixed state must come back module by module
    with TSCAMExplainer(tscam_model) as cam:
        maps = cam(images, [0, 1, 2])
        cam.attribute_ablations(images, [0, 1, 2])
    assert tscam_model.training and tscam_model.backbone.blocks[0].training and not tscam_model.head.training
    np.testing.assert_array_equal(maps, TSCAMExplainer(tscam_model.eval())(images, [0, 1, 2]))
