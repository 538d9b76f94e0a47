"""Eager reference implementations of rollout, Chefer's relevance and LeGrad (methods.md §7).

What users do today: a copy of the model with eager attention (``fused_attn=False``), the attention
matrices read at ``attn_drop``, gradients by autograd, every block's full N × N matrices and an N × N
relevance matrix. Written from the definitions, independently of the package's explainers (no q/k hooks,
no analytic attention gradients, no row tricks): the tests hold our maps to these, and
``benchmarks/bench_explainers.py`` measures them beside ours.

Each function takes a model made eager by :func:`eager_copy` (made once, as a user would) and returns
(B, N − P) raw values over the patch tokens, before any upsampling. ``classes=None``: the top-1 classes.
"""
from __future__ import annotations

import copy
from typing import List, Optional, Sequence

import torch
import torch.nn as nn


def eager_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose blocks compute attention eagerly (the attention matrix passes ``attn_drop``)."""
    eager = copy.deepcopy(model).eval()
    for module in eager.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "attn_drop"):
            module.fused_attn = False
    return eager


def _vit(model: nn.Module) -> nn.Module:
    return getattr(model, "backbone", model)


def _run(model: nn.Module, images: torch.Tensor, keep_graph: bool):
    """Logits, every block's attention (B, H, N, N) and every block's output tokens."""
    vit = _vit(model)
    attentions: List[torch.Tensor] = []
    outputs: List[torch.Tensor] = []
    handles = [block.attn.attn_drop.register_forward_hook(lambda _m, _i, a: attentions.append(a))
               for block in vit.blocks]
    handles += [block.register_forward_hook(lambda _m, _i, o: outputs.append(o)) for block in vit.blocks]
    try:
        with torch.set_grad_enabled(keep_graph):
            logits = model(images.clone().requires_grad_(keep_graph))
    finally:
        for handle in handles:
            handle.remove()
    return logits, attentions, outputs


def _classes(logits: torch.Tensor, classes: Optional[Sequence[int]]) -> torch.Tensor:
    return logits.argmax(dim=1) if classes is None else torch.as_tensor(classes)


def rollout(eager: nn.Module, images: torch.Tensor, head_fusion: str = "mean",
            discard_ratio: float = 0.0) -> torch.Tensor:
    prefix = _vit(eager).num_prefix_tokens
    _, attentions, _ = _run(eager, images, keep_graph=False)
    batch, _, count, _ = attentions[0].shape
    identity = torch.eye(count).expand(batch, count, count)
    relevance = identity
    for attention in attentions:
        fused = {"mean": attention.mean(dim=1), "max": attention.max(dim=1).values,
                 "min": attention.min(dim=1).values}[head_fusion].clone()
        if discard_ratio > 0:
            drop = int(discard_ratio * count * count)
            for image in range(batch):
                values = fused[image].flatten().clone()
                values[0] = float("inf")  # the class token's self-attention is never discarded
                order = torch.argsort(values, stable=True)[:drop]
                fused[image].view(-1)[order] = 0
        mixed = (fused + identity) / 2
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        relevance = mixed @ relevance
    return relevance[:, 0, prefix:]


def chefer(eager: nn.Module, images: torch.Tensor, classes: Optional[Sequence[int]] = None) -> torch.Tensor:
    prefix = _vit(eager).num_prefix_tokens
    logits, attentions, _ = _run(eager, images, keep_graph=True)
    score = logits[torch.arange(len(images)), _classes(logits, classes)].sum()
    gradients = torch.autograd.grad(score, attentions)
    batch, _, count, _ = attentions[0].shape
    relevance = torch.eye(count).expand(batch, count, count)
    for attention, gradient in zip(attentions, gradients):
        weights = (gradient * attention).clamp(min=0).mean(dim=1)
        relevance = relevance + weights @ relevance
    return relevance[:, 0, prefix:].detach()


def legrad(eager: nn.Module, images: torch.Tensor, classes: Optional[Sequence[int]] = None,
           blocks: Optional[Sequence[int]] = None, pooling: str = "model") -> torch.Tensor:
    vit = _vit(eager)
    prefix = vit.num_prefix_tokens
    logits, attentions, outputs = _run(eager, images, keep_graph=True)
    classes = _classes(logits, classes)
    chosen = range(len(attentions)) if blocks is None else [index % len(attentions) for index in blocks]
    total = 0
    for index in chosen:
        tokens = vit.norm(outputs[index])
        if pooling == "mean":
            logits = vit.head(vit.fc_norm(tokens.mean(dim=1)))
            if getattr(vit, "head_dist", None) is not None:
                logits = (logits + vit.head_dist(vit.fc_norm(tokens.mean(dim=1)))) / 2
        elif hasattr(eager, "backbone"):  # TS-CAM: conv head on the patch grid, then the global average
            patches = tokens[:, prefix:]
            side = int(round(patches.shape[1] ** 0.5))
            grid = patches.transpose(1, 2).reshape(len(patches), -1, side, patches.shape[1] // side)
            logits = eager.head(grid).mean(dim=(2, 3))
        else:
            logits = vit.forward_head(tokens)
        score = logits[torch.arange(len(classes)), classes].sum()
        gradient, = torch.autograd.grad(score, attentions[index], retain_graph=True)
        total = total + gradient.clamp(min=0).mean(dim=1).mean(dim=1)
    return total[:, prefix:].detach()
