"""Captum in both directions.

* **Captum's attributions as our explainers**: ``make_explainer("integratedgradients", model)`` and the other
  names of :func:`~tscam_explain.explainers.captum_attr.captum_explainer_names` give a
  :class:`~tscam_explain.explainers.captum_attr.CaptumExplainer` (re-exported here).
* **Our explainers as Captum attributions**: :class:`ExplainerAttribution` wraps any explainer
  :func:`~tscam_explain.explainers.make_explainer` builds (TS-CAM, TRT, rollout, chefer, legrad,
  pytorch-grad-cam's, Captum's) as a ``captum.attr.Attribution`` whose ``attribute(inputs, target=...)``
  returns input-shaped tensors, so ``captum.metrics.infidelity`` and ``captum.metrics.sensitivity_max``
  run on it; :func:`infidelity_and_sensitivity` computes both for one batch.

The maps also go straight into ``captum.attr.visualization.visualize_image_attr`` as (H, W, 1) arrays.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from captum.attr import Attribution
from captum.metrics import infidelity, sensitivity_max
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from .explainers import ViTExplainer, make_explainer, preserving_model, release_explainer
from .explainers.captum_attr import CaptumExplainer, captum_explainer_names

__all__ = ["CaptumExplainer", "captum_explainer_names", "ExplainerAttribution", "infidelity_and_sensitivity",
           "gaussian_perturbation", "uniform_perturbation"]

ExplainerSpec = Union[str, Callable[[nn.Module], Any], ViTExplainer, BaseCAM]
Target = Union[None, int, Sequence[int], torch.Tensor]


class ExplainerAttribution(Attribution):
    """One of our explainers as a Captum attribution: ``attribute(inputs, target)`` → (B, C, H, W).

    The explainer's map (min-max normalised, at the input size) is repeated over the input's channels: a
    pixel's relevance is shared by its channels. A name or a factory builds the explainer for each call and
    releases it after, so that no hook stays on the model between calls (Captum's metrics run the model on
    perturbed inputs in between); an explainer object is used as it is.

    Args:
        model: the model the explainer explains (also Captum's ``forward_func``).
        explainer: a name for :func:`~tscam_explain.explainers.make_explainer`, a factory ``factory(model)``,
            or an explainer object (ours or pytorch-grad-cam's).
        **explainer_kwargs: passed to ``make_explainer`` with a name.

    Example:
        >>> attribution = ExplainerAttribution(model, "tscam")
        >>> maps = attribution.attribute(images, target=labels)           # (B, 3, H, W)
        >>> captum.metrics.sensitivity_max(attribution.attribute, images, target=labels)
    """

    def __init__(self, model: nn.Module, explainer: ExplainerSpec, **explainer_kwargs: Any) -> None:
        super().__init__(model)
        if isinstance(explainer, str):
            self._factory: Optional[Callable[[nn.Module], Any]] = (
                lambda model_: make_explainer(explainer, model_, **explainer_kwargs))
            self._explainer = None
        elif isinstance(explainer, (ViTExplainer, BaseCAM)):
            self._factory, self._explainer = None, explainer
        elif callable(explainer):
            self._factory, self._explainer = explainer, None
        else:
            raise TypeError(f"explainer must be a name, a factory or an explainer object, got {type(explainer).__name__}")
        self.model = model

    def attribute(self, inputs: Union[torch.Tensor, Tuple[torch.Tensor]], target: Target = None) -> Any:
        """Maps of ``target`` (one class per image, or one for all; ``None``: the top-1 class), input-shaped.

        Args:
            inputs: (B, C, H, W) images, or a 1-tuple of them (as Captum's metrics pass them; a tuple comes back).
            target: an int, a sequence or tensor of B ints, or ``None``.
        """
        as_tuple = isinstance(inputs, tuple)
        images = inputs[0] if as_tuple else inputs
        targets = _targets(target, len(images))
        # the model as it was on the way out, whatever the explainer (or its construction) changed
        with preserving_model(self.model):
            explainer = self._explainer if self._explainer is not None else self._factory(self.model)
            try:
                # Captum's metrics call this under no_grad; gradient-based explainers need gradients
                with torch.enable_grad():
                    if isinstance(explainer, ViTExplainer):
                        maps = explainer.attribute(images, targets)
                    else:
                        maps = torch.as_tensor(explainer(input_tensor=images, targets=targets))
            finally:
                if self._explainer is None:
                    release_explainer(explainer)
        attributions = maps.to(images.device, images.dtype)[:, None].expand_as(images).contiguous()
        return (attributions,) if as_tuple else attributions


def _targets(target: Target, batch: int) -> Optional[list]:
    if target is None:
        return None
    if isinstance(target, int):
        target = [target] * batch
    classes = torch.as_tensor(target).reshape(-1).tolist()
    if len(classes) != batch:
        raise ValueError(f"got {len(classes)} targets for a batch of {batch} images; pass one per image or one int")
    return [ClassifierOutputTarget(int(category)) for category in classes]


def gaussian_perturbation(std: float, generator: torch.Generator) -> Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """Infidelity's perturbation: I ~ N(0, std²) per input element; returns (I, inputs − I), Captum's convention."""
    def perturb(inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype) * std
        return noise, inputs - noise
    return perturb


def uniform_perturbation(radius: float, generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """Sensitivity's perturbation: inputs + U(−radius, radius) per element (Captum's default, seeded)."""
    def perturb(inputs: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        return inputs + (2 * noise - 1) * radius
    return perturb


def infidelity_and_sensitivity(model: nn.Module, explainer: ExplainerSpec, images: torch.Tensor,
                               targets: Union[Sequence[int], torch.Tensor], *, n_perturb_samples: int = 4,
                               infidelity_std: float = 0.1, sensitivity_radius: float = 0.02, seed: int = 0,
                               maps: Optional[torch.Tensor] = None, **explainer_kwargs: Any) -> Dict[str, torch.Tensor]:
    """Captum's infidelity and max-sensitivity (Yeh et al., NeurIPS 2019) of one explainer on one batch.

    * ``infidelity``: E_I[(Iᵀ Φ − (f_c(x) − f_c(x − I)))²] over ``n_perturb_samples`` Gaussian perturbations
      I ~ N(0, ``infidelity_std``²) in the model's normalised input space, f_c the target logit, with
      Captum's ``normalize=True`` (the best scaling of Φ is used: our maps are min-max normalised, so
      their scale means nothing; the fitted scale makes one sample always 0, so at least 2 are needed,
      and few samples flatter every map alike). Lower is better. Captum evaluates the square's expansion,
      so a perfect fit can come out as −1e-12 rather than 0.
    * ``sensitivity_max``: max over ``n_perturb_samples`` uniform perturbations of radius
      ``sensitivity_radius`` (L∞, Captum's default 0.02) of ‖Φ(x + δ) − Φ(x)‖ / ‖Φ(x)‖ (Frobenius), the
      same target class. Lower is better.

    Each costs ``n_perturb_samples`` model runs per image (sensitivity: explainer runs), so the default
    is small; the perturbed batches go through the model ``len(images)`` images at a time. Seeded (infidelity's
    noise with ``seed``, sensitivity's with ``seed + 1``): the same call gives the same numbers. The model runs in eval mode and is left as it was.

    Args:
        model: the model.
        explainer: as for :class:`ExplainerAttribution` (a name such as ``"tscam"``, a factory, an object).
        images: (B, C, H, W) inputs, normalised as the model expects.
        targets: (B,) class per image.
        n_perturb_samples: perturbations per image for each metric.
        infidelity_std: σ of infidelity's Gaussian perturbation.
        sensitivity_radius: L∞ radius of sensitivity's uniform perturbation.
        seed: seed of both perturbations.
        maps: (B, H, W) the explainer's maps of ``images`` if they were computed already (as its call returns
            them), so that infidelity does not run the explainer again; sensitivity runs it on perturbed copies.
        **explainer_kwargs: passed to ``make_explainer`` with a name.

    Returns:
        ``{"infidelity": (B,), "sensitivity_max": (B,)}`` float tensors on the images' device.
    """
    if n_perturb_samples < 2:
        raise ValueError(f"n_perturb_samples must be >= 2, got {n_perturb_samples}: the normalised infidelity "
                         "fits the map's scale to the samples, so with one sample it is always 0")
    targets = torch.as_tensor(targets, device=images.device).reshape(-1)
    if len(targets) != len(images):
        raise ValueError(f"got {len(targets)} targets for {len(images)} images")
    attribution = ExplainerAttribution(model, explainer, **explainer_kwargs)
    generators = [torch.Generator(device=images.device).manual_seed(seed + offset) for offset in (0, 1)]
    if maps is not None and tuple(maps.shape) != (len(images), *images.shape[-2:]):
        raise ValueError(f"maps must be (B, H, W) = {(len(images), *images.shape[-2:])} for these images, "
                         f"got {tuple(maps.shape)}")
    with preserving_model(model):
        if maps is None:
            attributions = attribution.attribute(images, target=targets)
        else:
            attributions = maps.to(images.device, images.dtype)[:, None].expand_as(images).contiguous()
        infidelities = infidelity(model, gaussian_perturbation(infidelity_std, generators[0]), images, attributions,
                                  target=targets, n_perturb_samples=n_perturb_samples,
                                  max_examples_per_batch=len(images), normalize=True)
        sensitivities = sensitivity_max(attribution.attribute, images,
                                        perturb_func=uniform_perturbation(sensitivity_radius, generators[1]),
                                        n_perturb_samples=n_perturb_samples, max_examples_per_batch=len(images),
                                        target=targets)
    return {"infidelity": infidelities, "sensitivity_max": sensitivities}
