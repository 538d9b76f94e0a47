"""Captum in both directions: Captum's methods through our contract, our explainers as Captum attributions
(infidelity and sensitivity on every registered explainer), Captum's visualisation on our maps."""
import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import GradientShap, InputXGradient, IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from captum.attr import visualization
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from conftest import TINY, tiny_vit
from tscam_explain import create_trt, create_tscam, list_explainers, make_explainer
from tscam_explain.captum import CaptumExplainer, ExplainerAttribution, captum_explainer_names, infidelity_and_sensitivity
from tscam_explain.explainers.registry import _EXPLAINERS

matplotlib.use("Agg")

CAPTUM = {"saliency": Saliency, "inputxgradient": InputXGradient, "integratedgradients": IntegratedGradients,
          "gradientshap": GradientShap, "occlusion": Occlusion}

pytestmark = pytest.mark.usefixtures("one_thread")


def captum_reference(model, images, classes, name, sign="absolute_value", **kwargs):
    """Captum's class called directly, then the documented reduction: channel sum, sign, bilinear-free min-max."""
    inner = name.split("-")[-1]
    method = CAPTUM[inner](model)
    if name.startswith("noisetunnel-"):
        method = NoiseTunnel(method)
    defaults = {"gradientshap": dict(baselines=torch.zeros(1, 3, 64, 64)),
                "occlusion": dict(sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8))}.get(inner, {})
    if name.startswith("noisetunnel-"):
        defaults["nt_samples_batch_size"] = 1
    attributions = method.attribute(images, target=torch.tensor(classes), **{**defaults, **kwargs}).sum(dim=1)
    attributions = {"absolute_value": attributions.abs(), "positive": attributions.clamp(min=0),
                    "all": attributions}[sign].detach()
    flat = attributions.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low)).view_as(attributions).numpy()


@pytest.mark.parametrize("name", captum_explainer_names())
def test_captum_methods_through_our_contract_equal_captum_itself(name, images):
    model = tiny_vit()
    kwargs = dict(n_steps=8) if "integratedgradients" in name else {}
    assert name in list_explainers(model)
    seed_global_generators = lambda: (torch.manual_seed(5), np.random.seed(5))  # noqa: E731
    seed_global_generators()  # the noise tunnel and GradientShap draw from torch's and numpy's generators
    with make_explainer(name, model, **kwargs) as cam:
        assert isinstance(cam, CaptumExplainer)
        maps = cam(images, [1, 4, 7])
        assert cam.outputs.shape == (3, 10)
    assert maps.dtype == np.float32 and maps.shape == (3, 64, 64)
    seed_global_generators()
    np.testing.assert_allclose(maps, captum_reference(model, images, [1, 4, 7], name, **kwargs), atol=1e-5)


def test_captum_sign_options_and_targets(images):
    model = tiny_vit()
    for sign in ("positive", "all"):
        with make_explainer("Input_X_Gradient", model, sign=sign) as cam:
            maps = cam(images, [0, 1, 2])
        np.testing.assert_allclose(maps, captum_reference(model, images, [0, 1, 2], "inputxgradient", sign), atol=1e-5)
    with make_explainer("saliency", model) as cam:
        raw = cam.attribute(images, None, upsample=False)
        assert raw.shape == (3, 64, 64) and raw.min() >= 0
        assert not np.allclose(cam(images, [0, 0, 0]), cam(images, [5, 5, 5]))
    with pytest.raises(ValueError, match="sign"):
        make_explainer("saliency", model, sign="both")


def test_captum_explainers_accept_tscam_and_trt_models_but_not_headless_vits(images):
    tscam = create_tscam("deit_tiny_patch16_224", num_classes=5, **TINY)
    trt = create_trt("deit_tiny_patch16_224", num_classes=4, img_size=64, patch_size=8, depth=3, embed_dim=64,
                     num_heads=2)
    for model in (tscam, trt):
        assert set(captum_explainer_names()) <= set(list_explainers(model))
        with make_explainer("saliency", model) as cam:
            assert cam(images, [1, 2, 3]).shape == (3, 64, 64)
    assert "saliency" not in list_explainers(tiny_vit(num_classes=0))
    with pytest.raises(TypeError, match="class logits"):
        CaptumExplainer(tiny_vit(num_classes=0), "saliency")
    with pytest.raises(ValueError, match="unknown Captum method"):
        CaptumExplainer(tscam, "deeplift")


def models():
    torch.manual_seed(0)
    return {"vit": tiny_vit(), "tscam": create_tscam("deit_tiny_patch16_224", num_classes=5, **TINY).eval(),
            "trt": create_trt("deit_tiny_patch16_224", num_classes=5, img_size=64, patch_size=8, depth=3,
                              embed_dim=64, num_heads=2).eval()}


def test_explainer_attribution_is_input_shaped_and_equals_the_explainers_maps(images):
    model = models()["tscam"]
    for name in ("tscam", "rollout", "gradcam", "saliency"):
        attribution = ExplainerAttribution(model, name)
        maps = attribution.attribute(images, target=torch.tensor([0, 3, 4]))
        with make_explainer(name, model) as cam:
            expected = cam(images, [ClassifierOutputTarget(c) for c in (0, 3, 4)])
        assert maps.shape == images.shape
        for channel in range(3):
            np.testing.assert_allclose(maps[:, channel].numpy(), expected, atol=1e-6)
        as_tuple = attribution.attribute((images,), target=2)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0][:, 0], attribution.attribute(images, [2] * 3)[:, 0])
    assert not any(module._forward_hooks for module in model.modules())


def _by_hand(model, explainer, images, targets, n, std, radius, seed):
    """Infidelity (normalised) and max-sensitivity from their definitions, with the same seeded noise."""
    attribution = ExplainerAttribution(model, explainer)
    phi = attribution.attribute(images, targets)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(len(images))
    with torch.no_grad():
        logits = model(images)[rows, targets]
        dots, diffs = [], []
        for _ in range(n):
            noise = torch.randn(images.shape, generator=generator) * std
            dots.append((phi * noise).flatten(1).sum(1))
            diffs.append(logits - model(images - noise)[rows, targets])
    dots, diffs = torch.stack(dots, 1), torch.stack(diffs, 1)
    beta = (dots * diffs).sum(1) / (dots * dots).sum(1)
    infid = ((beta[:, None] * dots - diffs) ** 2).mean(1)
    generator = torch.Generator().manual_seed(seed + 1)
    ratios = []
    for _ in range(n):
        shifted = images + (2 * torch.rand(images.shape, generator=generator) - 1) * radius
        ratios.append((attribution.attribute(shifted, targets) - phi).flatten(1).norm(dim=1) / phi.flatten(1).norm(dim=1))
    return infid, torch.stack(ratios, 1).max(1).values


@pytest.mark.parametrize("name", ["chefer", "gradcam"])
def test_infidelity_and_sensitivity_equal_their_definitions(name, images):
    model = models()["vit"]
    targets = torch.tensor([3, 1, 8])
    scores = infidelity_and_sensitivity(model, name, images, targets, n_perturb_samples=2, infidelity_std=0.3,
                                        sensitivity_radius=0.05, seed=11)
    infid, sens = _by_hand(model, name, images, targets, 2, 0.3, 0.05, 11)
    torch.testing.assert_close(scores["infidelity"], infid, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(scores["sensitivity_max"], sens, rtol=1e-3, atol=1e-6)
    assert (scores["sensitivity_max"] > 0).all()
    with pytest.raises(ValueError, match="n_perturb_samples must be >= 2"):
        infidelity_and_sensitivity(model, name, images, targets, n_perturb_samples=1)
    # maps computed already (as the bench has them) give the same numbers without a second explainer run
    with make_explainer(name, model) as explainer:
        maps = torch.as_tensor(explainer(images, targets.tolist()))
    given = infidelity_and_sensitivity(model, name, images, targets, n_perturb_samples=2, infidelity_std=0.3,
                                       sensitivity_radius=0.05, seed=11, maps=maps)
    torch.testing.assert_close(given["infidelity"], scores["infidelity"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(given["sensitivity_max"], scores["sensitivity_max"], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"maps must be \(B, H, W\)"):
        infidelity_and_sensitivity(model, name, images, targets, maps=maps[:, :8])


def test_infidelity_and_sensitivity_run_on_every_registered_explainer(images):
    """Every name we register (ours and those added by later registrations) on each model it applies to,
    plus pytorch-grad-cam's and Captum's that the bench offers; the model is left as it was."""
    checked = set()
    for kind, model in models().items():
        model.train()
        names = [name for name in list_explainers(model) if name in _EXPLAINERS or name in ("gradcam", "saliency")]
        for name in names:
            scores = infidelity_and_sensitivity(model, name, images[:2], [1, 3], n_perturb_samples=2)
            assert set(scores) == {"infidelity", "sensitivity_max"}
            for values in scores.values():
                assert values.shape == (2,) and torch.isfinite(values).all() and (values > -1e-6).all()
            again = infidelity_and_sensitivity(model, name, images[:2], [1, 3], n_perturb_samples=2)
            assert all(torch.equal(scores[key], again[key]) for key in scores), name
            checked.add(name)
        assert model.training and not any(module._forward_hooks for module in model.modules())
    assert set(_EXPLAINERS) <= checked


def test_captum_visualisation_accepts_our_maps(images):
    model = tiny_vit()
    with make_explainer("legrad", model) as cam:
        maps = cam(images, [1, 2, 3])
    rgb = np.random.default_rng(0).random((64, 64, 3))
    figure, axis = visualization.visualize_image_attr(maps[0][..., None], original_image=rgb, method="blended_heat_map",
                                        sign="positive", outlier_perc=0, use_pyplot=False)
    heat = axis.images[-1].get_array()
    np.testing.assert_allclose(np.asarray(heat), maps[0], atol=1e-6)  # the map max is 1: Captum's scaling keeps it
    attribution = ExplainerAttribution(model, "legrad").attribute(images, [1, 2, 3])
    figure, axis = visualization.visualize_image_attr(attribution[0].permute(1, 2, 0).numpy(), method="heat_map", sign="positive",
                                        outlier_perc=0, use_pyplot=False)
    # Captum sums the three equal channels, then rescales by the maximum: the same map
    np.testing.assert_allclose(np.asarray(axis.images[-1].get_array()), maps[0], atol=1e-5)
