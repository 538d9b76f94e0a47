"""pytorch-grad-cam's own test matrix, as ours: every name ``list_explainers()`` returns (whatever is
registered, now or later) × four ViT token layouts × batch 1 and 3 × four kinds of target.

For each layout the zoo holds three tiny models: a plain timm ViT classifier, a TS-CAM model and a TRT
model. A name must apply to at least one of them (``list_explainers(model)``); where it does not apply,
``make_explainer`` must refuse it up front. Where it applies (all four kinds of target on the first model
it applies to; ``None`` and ints on the others and for the :data:`EXPENSIVE` methods):

* the contract: float32 numpy (B, H, W), finite, in [0, 1], ``.outputs`` (B, classes);
* batch equals one image at a time, and the same call twice gives the same maps (unless the method is
  random by design: :data:`STOCHASTIC`);
* ``with`` releases every hook it added, and lets exceptions through;
* the model is left exactly as it was (modules, hooks, train/eval flags, ``requires_grad``, ``.grad``,
  ``fused_attn``, weights), after successful calls and after calls that fail in their first or a later
  forward pass. The zoo's models start in training mode with dropout, one block in eval mode, a frozen
  patch embedding, a gradient already present and one block on eager attention, so that a restored flag
  is visible and a call that does not run in eval mode is not deterministic.

No "Exception ignored" message may be raised by anything created here (``sys.unraisablehook``).
"""
from __future__ import annotations

import gc
import sys
from typing import Dict, List

import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

from tscam_explain import create_trt, create_tscam, list_explainers, make_explainer

NUM_CLASSES = 5
SIZE = dict(img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2)
# dropout everywhere it exists: a call that does not switch to eval mode is not deterministic
DROPOUT = dict(drop_rate=0.3, proj_drop_rate=0.3, attn_drop_rate=0.3)
LAYOUTS = {
    "deit": ("deit_tiny_patch16_224", {}, (32, 32)),
    "distilled": ("deit_tiny_distilled_patch16_224", {}, (32, 32)),
    "registers": ("vit_base_patch16_224", dict(reg_tokens=4), (32, 32)),
    "dynamic": ("deit_tiny_patch16_224", dict(dynamic_img_size=True), (24, 40)),
}
#: methods random by design (random weights, noise, random baselines): contract only, no equality checks
STOCHASTIC = {"randomcam", "gradientshap", "noisetunnel-saliency", "noisetunnel-inputxgradient",
              "noisetunnel-integratedgradients"}
#: methods that run the model once per channel or path step: the reduced case (two kinds of target) everywhere
EXPENSIVE = {"scorecam", "ablationcam", "integratedgradients", "noisetunnel-integratedgradients"}
#: the module attributes where torch keeps hooks
HOOK_ATTRIBUTES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                   "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
                   "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
CLASSES = [3, 0, 4]


def _user_state(model: torch.nn.Module) -> torch.nn.Module:
    """Put the model in a state a user could leave it in, with every flag an explainer could change set
    to something other than the default."""
    model.train()
    vit = getattr(model, "backbone", model)
    vit.blocks[0].eval()
    vit.patch_embed.requires_grad_(False)
    vit.blocks[1].attn.fused_attn = False
    vit.blocks[0].norm1.weight.grad = torch.full_like(vit.blocks[0].norm1.weight, 0.5)
    return model


def _build(layout: str) -> Dict[str, torch.nn.Module]:
    name, extra, _ = LAYOUTS[layout]
    kwargs = {**SIZE, **extra, **DROPOUT}
    torch.manual_seed(0)
    models = {"vit": timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs),
              "tscam": create_tscam(name, num_classes=NUM_CLASSES, **kwargs),
              "trt": create_trt(name, num_classes=NUM_CLASSES, **kwargs)}
    return {kind: _user_state(model) for kind, model in models.items()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on busy shared cores two threads made this module
    ten times slower (each op waits for the second thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo() -> Dict[str, Dict[str, torch.nn.Module]]:
    return {layout: _build(layout) for layout in LAYOUTS}


def fingerprint(model: torch.nn.Module) -> dict:
    """Everything about a model that an explainer must leave as it was."""
    modules = list(model.named_modules(remove_duplicate=False))
    return {
        "modules": [(name, id(module)) for name, module in modules],
        "hooks": [(name, attribute, list(getattr(module, attribute, {})))
                  for name, module in modules for attribute in HOOK_ATTRIBUTES],
        "training": [(name, module.training) for name, module in modules],
        "fused_attn": [(name, module.fused_attn) for name, module in modules if hasattr(module, "fused_attn")],
        "requires_grad": [(name, p.requires_grad) for name, p in model.named_parameters()],
        "grad": [(name, None if p.grad is None else (id(p.grad), float(p.grad.sum())))
                 for name, p in model.named_parameters()],
        "weights": [(name, float(value.double().sum())) for name, value in model.state_dict().items()
                    if value.is_floating_point()],
    }


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(getattr(module, attribute, {})) for module in model.modules() for attribute in HOOK_ATTRIBUTES)


@pytest.fixture(autouse=True)
def no_unraisable_exceptions(monkeypatch):
    """Fail on any "Exception ignored in …" (e.g. a __del__ that raises) during the test."""
    caught: List[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: caught.append(f"{info.object!r}: {info.exc_value!r}"))
    yield
    gc.collect()
    assert not caught, caught


def _images(batch: int, size, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


TARGETS = {
    "none": lambda classes: None,
    "ints": lambda classes: list(classes),
    "ClassifierOutputTarget": lambda classes: [ClassifierOutputTarget(c) for c in classes],
    "ClassifierOutputSoftmaxTarget": lambda classes: [ClassifierOutputSoftmaxTarget(c) for c in classes],
}


def check_contract(maps, outputs, batch: int, size) -> None:
    assert isinstance(maps, np.ndarray) and maps.dtype == np.float32, (type(maps), getattr(maps, "dtype", None))
    assert maps.shape == (batch, *size)
    assert np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6, (maps.min(), maps.max())
    assert isinstance(outputs, torch.Tensor) and outputs.shape == (batch, NUM_CLASSES)


def run_matrix(name: str, model: torch.nn.Module, size, reduced: bool) -> None:
    """The full case: every kind of target; the reduced case: ``None`` and ints."""
    images = _images(3, size)
    deterministic = name not in STOCHASTIC
    before, hooks_before = fingerprint(model), hook_count(model)
    targets = {label: TARGETS[label] for label in (("none", "ints") if reduced else TARGETS)}
    with make_explainer(name, model) as cam:
        for label, make_targets in targets.items():
            maps = cam(images, make_targets(CLASSES))
            check_contract(maps, cam.outputs, 3, size)
            singles = []
            for index in range(3):
                single = cam(images[index:index + 1], make_targets(CLASSES[index:index + 1]))
                check_contract(single, cam.outputs, 1, size)
                singles.append(single)
            if deterministic:
                np.testing.assert_allclose(np.concatenate(singles), maps, atol=1e-4,
                                           err_msg=f"{name}, targets {label}: batch != one at a time")
                np.testing.assert_array_equal(cam(images, make_targets(CLASSES)), maps,
                                              err_msg=f"{name}, targets {label}: two calls differ")
        if deterministic:  # None explains the top-1 class, as ints of the top-1 class do
            top1 = cam.outputs.argmax(dim=1).tolist()
            np.testing.assert_allclose(cam(images, None), cam(images, top1), atol=1e-6)
        assert fingerprint(model) == {**before, "hooks": fingerprint(model)["hooks"]}
    assert hook_count(model) == hooks_before
    assert fingerprint(model) == before


class _Injected(RuntimeError):
    pass


def run_failures(name: str, model: torch.nn.Module, size) -> None:
    """A forward pass that raises (the first, the second or the third) leaves the model as it was and propagates."""
    vit = getattr(model, "backbone", model)
    images = _images(2, size)
    before = fingerprint(model)
    for failing_call in (1, 2, 3):
        calls = []

        def fail(_module, _inputs, _output):
            calls.append(1)
            if len(calls) == failing_call:
                raise _Injected(f"forward pass {failing_call}")

        handle = vit.blocks[-1].mlp.register_forward_hook(fail)
        try:
            with make_explainer(name, model) as cam:
                try:
                    cam(images, [1, 2])
                except _Injected:
                    pass
                else:
                    assert len(calls) < failing_call, f"{name} swallowed an exception of its forward pass"
        finally:
            handle.remove()
        assert fingerprint(model) == before, f"{name} changed the model after failing in forward pass {failing_call}"
    # and ``with`` lets an IndexError through (pytorch-grad-cam's own __exit__ swallows it)
    with pytest.raises(IndexError, match="raised in the block"):
        with make_explainer(name, model):
            raise IndexError("raised in the block")
    assert fingerprint(model) == before


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", list_explainers())
def test_every_listed_explainer_on_every_layout(name, layout, zoo):
    size = LAYOUTS[layout][2]
    applicable = [kind for kind, model in zoo[layout].items() if name in list_explainers(model)]
    assert applicable, f"{name!r} applies to none of {sorted(zoo[layout])} ({layout}); it cannot be listed"
    for kind, model in zoo[layout].items():
        if kind in applicable:
            # every kind of target on the first model the method applies to; the reduced case on the others
            run_matrix(name, model, size, reduced=name in EXPENSIVE or kind != applicable[0])
            run_failures(name, model, size)
        else:
            before = fingerprint(model)
            with pytest.raises(TypeError, match=f"explainer '{name}' does not apply to {type(model).__name__}"):
                make_explainer(name, model)
            assert fingerprint(model) == before
