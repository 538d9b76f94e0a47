"""Half precision and autocast: our explainers on bf16 and fp16 models and under CPU autocast (bf16) give
the float32 maps to a stated tolerance; inputs are cast to the model's dtype; evaluate and bench hold too.

Stated tolerances (max absolute difference of maps in [0, 1], docs/explainers.md):
* tscam, transattention, transcam, trt: 0.02 for bf16 and autocast, 0.005 for fp16;
* pytorch-grad-cam's gradcam, layercam, hirescam: 0.03 for bf16 and autocast, 0.005 for fp16;
* every other listed method: the contract only (float32, finite, in [0, 1]).
"""
import copy

import numpy as np
import pytest
import torch

from conftest import tiny_vit
from tscam_explain import create_trt, create_tscam, list_explainers, make_explainer
from tscam_explain.bench import BenchSettings, bench_model, synth_data
from tscam_explain.explainers import cast_input, dtype_policy, model_dtype
from tscam_explain.wsol import evaluate

TINY = dict(img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2)
OURS = {"tscam": 0.02, "transattention": 0.02, "transcam": 0.02, "trt": 0.02}
GRADIENT_METHODS = {"gradcam": 0.03, "layercam": 0.03, "hirescam": 0.03}
FP16 = 0.005
CLASSES = [1, 2, 3]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only waits on busy shared cores
    yield
    torch.set_num_threads(threads)


def models():
    torch.manual_seed(0)
    return {"vit": tiny_vit("deit_tiny_distilled_patch16_224", **TINY),
            "tscam": create_tscam("deit_tiny_patch16_224", num_classes=10, **TINY).eval(),
            "trt": create_trt("deit_tiny_patch16_224", num_classes=10, **TINY).eval()}


def half_variants(model):
    """(label, model, context) for bf16, fp16 and float32 under CPU autocast (bf16)."""
    return [("bf16", copy.deepcopy(model).bfloat16(), None), ("fp16", copy.deepcopy(model).half(), None),
            ("autocast", model, torch.bfloat16)]


def explain(name, model, images, autocast_dtype=None):
    with make_explainer(name, model) as cam:
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            maps = cam(images, CLASSES)
        assert cam.outputs.dtype == torch.float32
    assert maps.dtype == np.float32 and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    return maps


@pytest.mark.parametrize("kind", ["vit", "tscam", "trt"])
def test_every_explainer_in_half_precision_and_autocast(kind, images):
    model, images = models()[kind], images[..., :32, :32]
    for name in list_explainers(model):
        expected = explain(name, model, images)
        for label, variant, autocast_dtype in half_variants(model):
            maps = explain(name, variant, images, autocast_dtype)
            tolerance = {**OURS, **GRADIENT_METHODS}.get(name)
            if tolerance is not None:
                limit = FP16 if label == "fp16" else tolerance
                assert np.abs(maps - expected).max() <= limit, (name, label, np.abs(maps - expected).max())
    assert model_dtype(model) == torch.float32  # explaining under autocast leaves the weights float32


def test_raw_maps_are_float32_and_inputs_are_cast_not_refused(images):
    model, images = models()["tscam"], images[..., :32, :32]
    half = copy.deepcopy(model).bfloat16()
    with make_explainer("transcam", half) as cam:
        raw = cam.attribute(images, CLASSES, upsample=False)
    assert raw.dtype == torch.float32 and raw.shape == (3, 4, 4)
    # float64 images for a float32 model: cast, the same maps as float32 images
    with make_explainer("tscam", model) as cam:
        np.testing.assert_array_equal(cam(images.double(), CLASSES), cam(images, CLASSES))
    assert images.dtype == torch.float32 and not images.requires_grad  # the caller's tensor is untouched
    assert cast_input(half, images).dtype == torch.bfloat16
    assert cast_input(half, images.long()).dtype == torch.long  # left for the input check to refuse
    with make_explainer("tscam", half) as cam, pytest.raises(TypeError, match="floating-point"):
        cam(images.long(), CLASSES)


def test_dtype_policy_casts_calls_of_the_model_and_removes_its_hooks(images):
    half, images = copy.deepcopy(models()["vit"]).bfloat16(), images[..., :32, :32]
    with pytest.raises(RuntimeError):
        half(images)  # torch's own "Input type (float) and bias type (c10::BFloat16) should be the same"
    with dtype_policy(half):
        logits = half(images)
    assert logits.dtype == torch.float32 and logits.shape == (3, 10)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in half.modules())


class PlainExplainer:
    """A user's explainer with pytorch-grad-cam's contract that calls its model as it is (no casting)."""

    def __init__(self, model):
        self.model, self.outputs = model, None

    def __call__(self, input_tensor, targets):
        with torch.no_grad():
            self.outputs = self.model(input_tensor)
        return np.ones((len(input_tensor), *input_tensor.shape[-2:]), np.float32)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_data(tmp_path_factory.mktemp("synth"), images=6, seed=4, size=32)


def _tiny_tscam():
    torch.manual_seed(0)
    return create_tscam("deit_tiny_patch16_224", num_classes=6, img_size=32, patch_size=8, depth=2, embed_dim=32,
                        num_heads=2).eval()


def _within_one_image(a: float, b: float, images: int) -> bool:
    return abs(a - b) <= 100 / images + 1e-9


def test_evaluate_in_half_precision_and_under_autocast(synth):
    model = _tiny_tscam()
    reader = synth.make_reader("tscam", 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    reports = {}
    for label, variant, autocast_dtype in [("fp32", model, None)] + half_variants(model):
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            reports[label] = evaluate(make_explainer("tscam", variant), reader, "tscam", cam_threshold=0.1,
                                      progress=False, batch_size=4).metrics["localization"]
    for label in ("bf16", "fp16", "autocast"):
        for metric in ("top1_cls", "gt_known", "top1_loc"):
            assert _within_one_image(reports[label][metric], reports["fp32"][metric], len(reader)), (label, metric)
    # an explainer that calls its bf16 model as it is: evaluate casts the images (the same policy)
    report = evaluate(PlainExplainer(copy.deepcopy(model).bfloat16()), reader, "tscam", cam_threshold=0.1,
                      progress=False)
    assert report.dataset["images"] == len(reader)


def test_bench_in_half_precision_and_under_autocast(synth):
    settings = BenchSettings(batch_size=4, faithfulness_images=4, road_images=2, sanity_images=2, expensive_images=2,
                             road_combined_percentiles=(30, 70), deletion_steps=4, overlay_images=2, progress=False)
    model = _tiny_tscam()
    names = ["tscam", "gradcam"]
    expected = {row["explainer"]: row for row in bench_model(model, "fp32", synth, names, settings)["rows"]}
    for label, variant, autocast_dtype in half_variants(model):
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            rows = bench_model(variant, label, synth, names, settings)["rows"]
        for row in rows:
            reference = expected[row["explainer"]]
            assert _within_one_image(row["localization"]["tscam"]["gt_known"],
                                     reference["localization"]["tscam"]["gt_known"], 6), (label, row["explainer"])
            assert abs(row["faithfulness"]["deletion_auc"] - reference["faithfulness"]["deletion_auc"]) < 0.02
        assert not any(module._forward_hooks or module._forward_pre_hooks for module in variant.modules())
