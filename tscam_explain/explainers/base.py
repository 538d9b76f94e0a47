"""The pytorch-grad-cam calling contract, shared by the token-based explainers (TS-CAM, TRT, …).

``explainer(input_tensor, targets=None, aug_smooth=False, eigen_smooth=False)`` returns an
``np.ndarray`` float32 (B, H, W), each map min-max normalised to [0, 1], exactly as pytorch-grad-cam's
``BaseCAM.__call__`` does; ``explainer.outputs`` holds the logits (float32); ``with`` releases the hooks.
:meth:`ViTExplainer.attribute` is the tensor path (Captum-style): the maps stay on the model's device.

Two policies every explainer shares (ours, and pytorch-grad-cam's as :func:`make_explainer` builds them):

* **dtype** (:func:`cast_input`, :func:`dtype_policy`): a floating-point input is moved to the model's
  device and cast to the model's dtype (a float32 batch for a bf16 model is cast to bf16, not refused);
  under ``torch.autocast`` the model's own dtype is kept and autocast chooses each op's precision.
  Logits and maps come back float32. The harness (``evaluate``) and the bench apply the same policy.
* **the user's model is left as it was** (:func:`preserving_model`): each call runs the model in eval
  mode and then puts back every module's train/eval flag, its submodules, the hooks, ``requires_grad``,
  the parameters' ``.grad`` and the attention modules' ``fused_attn`` flags, whether the call succeeded or
  raised. The hooks an explainer keeps between calls are removed by ``release()`` / ``with``.
"""
from __future__ import annotations

import contextlib
import itertools
import warnings
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import ttach
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch.utils.hooks import RemovableHandle

from ..vit import check_input

Targets = Optional[Sequence[Any]]


def _target_list(targets: Sequence[Any], batch: int) -> List[Any]:
    """``targets`` as a list with one entry per image, or a clear error."""
    if isinstance(targets, torch.Tensor):
        targets = targets.tolist()
    if isinstance(targets, (str, bytes)) or not hasattr(targets, "__len__"):
        raise TypeError(f"targets must be a sequence with one target per image, got {type(targets).__name__}")
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch} images; pass one target per image")
    return list(targets)


def _class_index(target: Any, position: int) -> int:
    """The class of an int, a 0-d integer tensor or a target with a ``category``."""
    category = getattr(target, "category", target)
    if isinstance(category, torch.Tensor) and category.numel() == 1:
        category = category.item()
    if isinstance(category, np.integer):
        category = int(category)
    if not isinstance(category, int) or isinstance(category, bool):
        raise TypeError(
            f"target {position} is {target!r}; expected an int class index or a pytorch-grad-cam "
            "target with a 'category' (e.g. ClassifierOutputTarget(3))"
        )
    return category


def resolve_targets(targets: Targets, logits: torch.Tensor) -> torch.Tensor:
    """Turn pytorch-grad-cam targets into one class index per image.

    Args:
        targets: ``None`` (the predicted top-1 class), or one entry per image: an int, a 0-d
            integer tensor, or a pytorch-grad-cam target with a ``category`` attribute
            (``ClassifierOutputTarget``, ``ClassifierOutputSoftmaxTarget``, …).
        logits: (B, C) model outputs.

    Returns:
        (B,) long tensor on the logits' device.
    """
    batch, num_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=-1)
    classes = []
    for position, target in enumerate(_target_list(targets, batch)):
        category = _class_index(target, position)
        if not 0 <= category < num_classes:
            raise ValueError(f"target {position} is class {category}, outside 0..{num_classes - 1}")
        classes.append(category)
    return torch.tensor(classes, dtype=torch.long, device=logits.device)


def callable_targets(targets: Targets, batch: int) -> Optional[List[Any]]:
    """pytorch-grad-cam's targets (callables on the model output) from what our explainers accept.

    ints and 0-d integer tensors become ``ClassifierOutputTarget``; callables (any pytorch-grad-cam
    target) are kept; ``None`` stays ``None`` (the predicted top-1 class).
    """
    if targets is None:
        return None
    return [target if callable(target) else ClassifierOutputTarget(_class_index(target, position))
            for position, target in enumerate(_target_list(targets, batch))]


# -- the dtype policy -------------------------------------------------------------------------------
def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s first floating-point parameter (or buffer): what its inputs are cast to."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (CPU for a model without any)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def cast_input(model: nn.Module, input_tensor: torch.Tensor) -> torch.Tensor:
    """The one dtype policy of the explainers, the harness and the bench.

    A floating-point tensor is moved to the model's device and cast to :func:`model_dtype` (float32
    images for a bf16 or fp16 model are cast, not refused; a float64 batch for a float32 model too).
    Anything else is returned unchanged, for the input checks to refuse with their own message.
    Under ``torch.autocast`` the model keeps its dtype (usually float32) and autocast casts per op.
    """
    if not isinstance(input_tensor, torch.Tensor) or not input_tensor.is_floating_point():
        return input_tensor
    return input_tensor.to(device=model_device(model), dtype=model_dtype(model))


@contextlib.contextmanager
def dtype_policy(model: nn.Module) -> Iterator[nn.Module]:
    """Apply :func:`cast_input` to every call of ``model(...)`` inside the block, and return its tensor
    outputs (the logits) as float32.

    For code that calls the model itself (pytorch-grad-cam's methods run it several times, on inputs they
    build themselves; the bench's perturbation metrics). The two hooks it adds are removed on exit.
    """

    def cast_inputs(_module: nn.Module, args: tuple) -> tuple:
        return tuple(cast_input(model, arg) for arg in args)

    def float_outputs(_module: nn.Module, _args: tuple, output: Any) -> Any:
        return output.float() if isinstance(output, torch.Tensor) and output.is_floating_point() else output

    handles = [model.register_forward_pre_hook(cast_inputs), model.register_forward_hook(float_outputs)]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


# -- leaving the user's model as it was ---------------------------------------------------------------
#: nn.Module's hook dictionaries (forward, backward, state-dict hooks and their variants)
_HOOK_DICTS = tuple(name for name, value in vars(nn.Module()).items() if "hook" in name and isinstance(value, dict))


class ModelState:
    """What an explainer could change on a model, captured so that :meth:`restore` puts it back.

    Captured: every module's submodules (pytorch-grad-cam's AblationCAM swaps the target layer for its
    ablation layer), train/eval flag, hooks and ``fused_attn`` flag (timm's attention), and every
    parameter's ``requires_grad`` and ``.grad`` (pytorch-grad-cam zeroes and refills the gradients).

    Hooks are told apart by their handle id: torch numbers every hook it registers from one increasing
    counter (``RemovableHandle.next_id``), so the hooks added since the capture are those with an id at
    least the counter's value then. That keeps a capture cheap (a fraction of a millisecond for DeiT-S):
    it runs on every explainer call.

    Args:
        model: the model to capture.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        modules = list(model.modules())
        self.children = [(module, list(module._modules.items())) for module in modules]
        self.training = [(module, module.training) for module in modules]
        # instance attributes are read from __dict__: nn.Module's __getattr__ raises for a missing one (slow)
        self.fused_attn = [(module, module.fused_attn) for module in modules if "fused_attn" in module.__dict__]
        self.hook_dicts = [hooks for module in modules for hooks in map(module.__dict__.get, _HOOK_DICTS)
                           if hooks is not None]
        self.next_hook_id = RemovableHandle.next_id
        parameters = {id(parameter): parameter for module in modules for parameter in module._parameters.values()
                      if parameter is not None}  # shared parameters once
        self.parameters = [(parameter, parameter.requires_grad, parameter.grad) for parameter in parameters.values()]

    def restore(self, *, hooks: bool = True) -> None:
        """Put the captured state back; ``hooks=False`` keeps hooks added since (an explainer's own)."""
        for module, children in self.children:
            if list(module._modules.items()) != children:
                module._modules.clear()
                module._modules.update(children)
        # only what differs is written back: nn.Module.__setattr__ is slow, and this runs on every call
        for module, training in self.training:
            if module.training != training:
                module.training = training
        for module, fused in self.fused_attn:
            if module.fused_attn != fused:
                module.fused_attn = fused
        if hooks:
            for hook_dict in self.hook_dicts:
                for key in [key for key in hook_dict if key >= self.next_hook_id] if hook_dict else ():
                    del hook_dict[key]
        for parameter, requires_grad, grad in self.parameters:
            if parameter.requires_grad != requires_grad:
                parameter.requires_grad_(requires_grad)
            if parameter.grad is not grad:
                parameter.grad = grad


@contextlib.contextmanager
def preserving_model(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode, then restore it exactly (:class:`ModelState`), even if
    the block raised. Hooks added inside the block are removed; those added before stay."""
    state = ModelState(model)
    try:
        if any(training for _, training in state.training):
            model.eval()
        yield model
    finally:
        state.restore()


def normalize_maps(maps: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Per-map min-max normalisation of (B, H, W) to [0, 1]; a constant map becomes zeros.

    Args:
        maps: (B, H, W) maps (contiguous when ``inplace``).
        inplace: overwrite ``maps`` instead of allocating a second image-sized tensor.
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    span = torch.where(span > 0, span, torch.ones_like(span))
    if inplace:
        flat.sub_(low).div_(span)
        return maps
    return ((flat - low) / span).view_as(maps)


def upsample_maps(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (B, gh, gw) grid maps to the input size, then min-max (TS-CAM's order)."""
    upsampled = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(upsampled, inplace=True)


def first_principal_projection(contributions: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Eigen smoothing: project per-channel map terms on their first principal component.

    pytorch-grad-cam's ``eigen_smooth`` projects the weighted activations on their first principal
    component; here the weighted activations are the per-channel terms of the class map.
    The SVD's sign is arbitrary, so it is chosen to correlate positively with ``reference``.

    Args:
        contributions: (B, n, D) per-token, per-channel terms whose sum over D is the class map.
        reference: (B, n) the plain class map.

    Returns:
        (B, n) projection.
    """
    centered = contributions.float() - contributions.float().mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    projection = torch.einsum("bnd,bd->bn", centered, vh[:, 0])
    reference = reference.float() - reference.float().mean(dim=1, keepdim=True)
    sign = torch.sign((projection * reference).sum(dim=1, keepdim=True))
    return projection * torch.where(sign == 0, torch.ones_like(sign), sign)


class ViTExplainer:
    """Base of the token-based explainers.

    Subclasses implement :meth:`_forward` (one forward pass, returning logits and whatever the
    maps need) and :meth:`_class_maps` (grid maps for one class per image).

    Args:
        model: the model to explain. Each call runs it in eval mode and leaves it as it was
            (:func:`preserving_model`): a model in training mode stays in training mode.
        tta_transforms: ttach transforms for ``aug_smooth``; default: pytorch-grad-cam's
            (horizontal flip × multiply by 0.9, 1, 1.1).
    """

    def __init__(self, model: nn.Module, tta_transforms: Optional[ttach.Compose] = None) -> None:
        self.model = model
        self.tta_transforms = tta_transforms if tta_transforms is not None else ttach.Compose(
            [ttach.HorizontalFlip(), ttach.Multiply(factors=[0.9, 1, 1.1])]
        )
        self.outputs: Optional[torch.Tensor] = None

    @property
    def device(self) -> torch.device:
        """Where the model is (read at each call: the model may have moved since)."""
        return model_device(self.model)

    # -- to implement -------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        """The timm ViT whose input is validated."""
        raise NotImplementedError

    def _forward(self, input_tensor: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        """Run the model once; return (logits (B, C), context for :meth:`_class_maps`)."""
        raise NotImplementedError

    def _class_maps(self, context: Any, classes: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
        """Raw (B, gh, gw) maps for ``classes[b]`` of image b."""
        raise NotImplementedError

    # -- the contract -------------------------------------------------------------------------
    def attribute(self, input_tensor: torch.Tensor, targets: Targets = None, *, upsample: bool = True,
                  aug_smooth: bool = False, eigen_smooth: bool = False) -> torch.Tensor:
        """Explain a batch, keeping the maps on the model's device.

        Args:
            input_tensor: (B, C, H, W) images, normalised as the model expects.
            targets: one target per image (see :func:`resolve_targets`); ``None`` = top-1 prediction.
            upsample: ``True``: (B, H, W) maps in [0, 1]. ``False``: raw (B, gh, gw) patch-grid maps,
                not normalised (what evaluation protocols resize themselves).
            aug_smooth: average over test-time augmentations (needs ``upsample=True``).
            eigen_smooth: first-principal-component smoothing of the class map.
        """
        if aug_smooth:
            if not upsample:
                raise ValueError("aug_smooth averages maps in image space; it needs upsample=True")
            return self._augmentation_smoothed(input_tensor, targets, eigen_smooth)
        # the maps may run the model again (gradients, perturbations): restored after both
        with preserving_model(self.model):
            context, classes = self._explained_pass(input_tensor, targets)
            with torch.no_grad():
                maps = self._class_maps(context, classes, eigen_smooth)
        return self._finish(maps, tuple(input_tensor.shape[-2:]), upsample)

    def _explained_pass(self, input_tensor: torch.Tensor, targets: Targets) -> Tuple[Any, torch.Tensor]:
        """Check the input, cast it (:func:`cast_input`), run :meth:`_forward` once, keep the logits
        (float32); return (context, classes). Callers run it under :func:`preserving_model`."""
        check_input(self.backbone, input_tensor)
        input_tensor = cast_input(self.model, input_tensor)
        with torch.no_grad():
            logits, context = self._forward(input_tensor)
        self.outputs = logits.float()
        return context, resolve_targets(targets, logits)

    @staticmethod
    def _finish(maps: torch.Tensor, size: Tuple[int, int], upsample: bool) -> torch.Tensor:
        """Refuse non-finite maps; float32; upsample and normalise them when asked."""
        if not torch.isfinite(maps).all():
            raise FloatingPointError(
                "the explanation maps contain NaN or Inf; check the model's weights and inputs"
            )
        return upsample_maps(maps, size) if upsample else maps.float()

    def _augmentation_smoothed(self, input_tensor: torch.Tensor, targets: Targets,
                               eigen_smooth: bool) -> torch.Tensor:
        total = None
        for transform in self.tta_transforms:
            augmented = transform.augment_image(input_tensor)
            maps = self.attribute(augmented, targets, eigen_smooth=eigen_smooth)
            if targets is None:
                # keep the classes of the first view, so every view explains the same class
                targets = self.outputs.argmax(dim=-1)
            maps = transform.deaugment_mask(maps[:, None])[:, 0]
            total = maps if total is None else total + maps
        return total / len(self.tta_transforms)

    def __call__(self, input_tensor: torch.Tensor, targets: Targets = None, aug_smooth: bool = False,
                 eigen_smooth: bool = False) -> np.ndarray:
        """pytorch-grad-cam's call: float32 (B, H, W) numpy maps in [0, 1]."""
        maps = self.attribute(input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        return maps.float().cpu().numpy()

    def release(self) -> None:
        """Remove every hook this explainer put on the model."""

    def __enter__(self) -> "ViTExplainer":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        # returns None: exceptions raised inside the block propagate
        self.release()


def warn_eigen_smooth_unused(name: str) -> None:
    warnings.warn(f"{name} has no class features to smooth; eigen_smooth=True is ignored", stacklevel=3)
