"""TRT, the token refinement transformer (Su et al., BMVC 2022), on any timm ViT.

Stage 1 (backbone + TPSM, the token priority scoring module), for a ViT of L blocks:

1. blocks 1 … L−1 run once; their CLS attention rows (recorded with timm's fused attention kept)
   sum to the preliminary attention m, normalised to Σ m = 1;
2. token selection b: by default the CDF rule with parameter ``u`` (:class:`TokenSelection`);
3. masked re-attention: a copy of block L over the patch tokens of block L−1, each token
   attending to the selected tokens and itself, with the ε-masked softmax (:func:`masked_softmax`);
4. importance weights λ = exp(s)·b / (Σ exp(s)·b + 1e-6), s = Linear(LayerNorm(re-attended tokens));
5. fusion token t = Σ λ_i x_i over the re-attention block's *input* patch tokens;
6. block L on the two tokens [CLS, t], final norm, classifier on CLS → the TPSM logits.

Stage 2 (the CAM branch; stage 1 frozen): another copy of block L over the output of block L−2
(prefix tokens included), a LayerNorm, Conv2d 3×3 over the patch grid → M_C; logits = GAP(M_C).

Map: r = m·(1 − b) + λ·Σ_j m_j b_j (selected tokens share the selected mass by λ), M = r ⊙ M_C[c].
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, NamedTuple, Optional

import timm
import torch
import torch.nn as nn

from ..vit import (CLSAttentionRecorder, TokenLayout, block_forward_with_softmax, check_standard_block, check_vit,
                   class_token_features, embed_tokens, final_norm, split_tokens, token_layout, tokens_to_grid)
from .heads import Conv2dHead
from .registry import register_architecture

#: ε of the masked re-attention softmax (official code).
REATTENTION_EPS = 1e-6
#: the constant added to the denominator of the importance weights λ (official code).
IMPORTANCE_EPS = 1e-6

SELECTION_STRATEGIES = ("cdf", "top_k", "threshold")


def cdf_selection(attention: torch.Tensor, u: float) -> torch.Tensor:
    """TRT's adaptive threshold: keep the tokens whose cumulative mass stays strictly below ``u``.

    A token's cumulative mass is the total attention of all tokens at least as large as it
    (itself and its ties included): Σ_{j: m_j ≥ m_i} m_j. Without ties this is the official
    code's rule (sort descending, cumulative sum, keep while ``< u``; the token that crosses ``u``
    is dropped). With ties the official result depends on the order of an unstable sort; here tied
    tokens are kept or dropped together, so b is a threshold on the values (the paper's
    b = [m > τ′]) and does not depend on token order.

    Args:
        attention: (B, n) non-negative attention m, normalised so that each row sums to 1.
        u: the mass to sample, in (0, 1].

    Returns:
        (B, n) bool selection b. Empty when the largest token alone holds ``u`` or more.
    """
    ascending = attention.sort(dim=-1).values
    # mass_at_or_above[k] = sum of ascending[k:], the mass of the k-th smallest value and everything above
    mass_at_or_above = ascending.flip(-1).cumsum(-1).flip(-1)
    first_at_or_above = torch.searchsorted(ascending.contiguous(), attention.contiguous(), side="left")
    return mass_at_or_above.gather(-1, first_at_or_above) < u


def top_k_selection(attention: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` tokens with the largest attention (the paper's top-k ablation); ties broken by ``topk``.

    Args:
        attention: (B, n) attention m.
        k: how many tokens to keep; ``k >= n`` keeps all of them.

    Returns:
        (B, n) bool selection.
    """
    k = min(k, attention.shape[-1])
    selection = torch.zeros_like(attention, dtype=torch.bool)
    return selection.scatter(-1, attention.topk(k, dim=-1).indices, True)


def threshold_selection(attention: torch.Tensor, tau: float) -> torch.Tensor:
    """Keep the tokens whose attention exceeds ``tau`` times the image's largest (the fixed-threshold ablation).

    Relative to the maximum, as CAM thresholds are, so that one τ means the same at every grid size
    (normalised m shrinks as the number of patches grows).

    Args:
        attention: (B, n) attention m.
        tau: fraction of the maximum, in [0, 1].

    Returns:
        (B, n) bool selection.
    """
    return attention > tau * attention.amax(dim=-1, keepdim=True)


@dataclass(frozen=True)
class TokenSelection:
    """How TPSM picks the tokens it re-attends: b = select(m).

    Args:
        strategy: ``cdf`` (TRT's adaptive threshold, value = u in (0, 1]), ``top_k`` (value = k, an
            integer >= 0) or ``threshold`` (value = τ in [0, 1], relative to the image's maximum).
        value: the strategy's parameter.
    """

    strategy: str
    value: float

    def __post_init__(self) -> None:
        if self.strategy not in SELECTION_STRATEGIES:
            raise ValueError(f"unknown token selection {self.strategy!r}; expected one of {SELECTION_STRATEGIES}")
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"the {self.strategy} selection needs a finite number, got {value!r}")
        if self.strategy == "cdf" and not 0 < value <= 1:
            raise ValueError(f"u must be in (0, 1], got {value}")
        if self.strategy == "top_k" and (value != int(value) or value < 0):
            raise ValueError(f"top_k must be an integer >= 0, got {value}")
        if self.strategy == "threshold" and not 0 <= value <= 1:
            raise ValueError(f"the threshold tau is a fraction of the maximum attention, in [0, 1]; got {value}")

    def __call__(self, attention: torch.Tensor) -> torch.Tensor:
        """(B, n) normalised attention m → (B, n) bool selection b."""
        if self.strategy == "cdf":
            return cdf_selection(attention, self.value)
        if self.strategy == "top_k":
            return top_k_selection(attention, int(self.value))
        return threshold_selection(attention, self.value)


def masked_softmax(scores: torch.Tensor, selection: torch.Tensor, eps: float = REATTENTION_EPS) -> torch.Tensor:
    """TRT's masked softmax over keys: A = (exp(S − rowmax)·G + ε/N) / (Σ exp(S − rowmax)·G + ε).

    G_ij = b_j + (1 − b_j)·δ_ij: query i sees the selected keys and itself. The row maximum is
    taken over all keys, as in the official code; ε keeps a row finite when every key it sees
    underflows (rows still sum to 1). Computed in float32 (the official code does too).

    Args:
        scores: (B, heads, N, N) scaled attention logits.
        selection: (B, N) bool key selection b.
        eps: ε; 0 gives the plain masked softmax (−inf outside G).

    Returns:
        (B, heads, N, N) float32 attention weights.
    """
    count = scores.shape[-1]
    if selection.shape != (scores.shape[0], count):
        raise ValueError(f"selection must be (B, N) = {(scores.shape[0], count)}, got {tuple(selection.shape)}")
    scores = scores.float()
    visible = selection[:, None, None, :] | torch.eye(count, dtype=torch.bool, device=scores.device)
    weights = (scores - scores.amax(dim=-1, keepdim=True)).exp() * visible
    return (weights + eps / count) / (weights.sum(dim=-1, keepdim=True) + eps)


def importance_weights(scores: torch.Tensor, selection: torch.Tensor, eps: float = IMPORTANCE_EPS) -> torch.Tensor:
    """λ = exp(s)·b / (Σ exp(s)·b + ε), computed without overflow.

    Written as exp(s_i − log(Σ_{selected} exp(s) + ε)) with ``logsumexp``, which equals the formula
    but stays finite for any s; unselected tokens (and every token of an empty selection) get 0.

    Args:
        scores: (B, n) importance scores s.
        selection: (B, n) bool selection b.
        eps: the constant added to the denominator.

    Returns:
        (B, n) float32 weights summing to just under 1 (0 for an empty selection).
    """
    selected = scores.float().masked_fill(~selection, -math.inf)
    log_eps = torch.full_like(selected[:, :1], math.log(eps))
    log_denominator = torch.logsumexp(torch.cat([selected, log_eps], dim=-1), dim=-1, keepdim=True)
    return (selected - log_denominator).exp()


def refine_attention(attention: torch.Tensor, selection: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """r = m·(1 − b) + λ·Σ_j m_j b_j: selected tokens share the selected mass by λ; the rest keep m.

    An empty selection gives λ = 0 and Σ m b = 0, so r = m (the official code divides 0 by 0 here).
    """
    kept = attention * selection
    return attention - kept + importance * kept.sum(dim=-1, keepdim=True)


class MaskedReAttentionBlock(nn.Module):
    """A transformer block whose attention is TRT's masked, ε-stabilised softmax.

    It owns a copy of a timm ``Block`` and reuses all of its weights (qkv, projection, norms, MLP,
    layer scale, drop path); only the attention normalisation differs, so the N×N matrix is formed
    explicitly. ``scaled_dot_product_attention`` cannot compute it: an SDPA mask is added to the
    logits before exponentiation, while the ε/N term is added to the exponentiated, row-max-shifted
    weights — it depends on each row's maximum and cannot be written as a logit bias.

    Args:
        block: the block to copy (TRT: block L); deep-copied, the original is untouched.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = copy.deepcopy(check_standard_block(block))

    def forward(self, tokens: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
        """(B, n, D) patch tokens and their (B, n) bool selection → (B, n, D)."""
        return block_forward_with_softmax(self.block, tokens, lambda scores: masked_softmax(scores, selection))


class TRTOutput(NamedTuple):
    """What :meth:`TRT.forward_parts` computed; a part that was not asked for is ``None``.

    Attributes:
        logits: TPSM logits (B, C): the stage-1 loss and the classification.
        cam_logits: GAP(M_C) (B, C): the stage-2 loss.
        cam_maps: M_C (B, C, gh, gw).
        cam_features: the CAM head's input grid (B, D, gh, gw) (for eigen smoothing).
        attention: preliminary attention m (B, n), float32, rows summing to 1.
        selection: token selection b (B, n), bool.
        importance: importance weights λ (B, n), float32.
        refined_attention: r (B, n), float32.
    """

    logits: Optional[torch.Tensor] = None
    cam_logits: Optional[torch.Tensor] = None
    cam_maps: Optional[torch.Tensor] = None
    cam_features: Optional[torch.Tensor] = None
    attention: Optional[torch.Tensor] = None
    selection: Optional[torch.Tensor] = None
    importance: Optional[torch.Tensor] = None
    refined_attention: Optional[torch.Tensor] = None


class TRT(nn.Module):
    """The token refinement transformer on a timm ViT: backbone, TPSM and the CAM branch.

    Training is two-stage (official code):

    * stage 1 (the default): ``model.set_stage(1)``; ``model(x)`` returns the **TPSM logits**;
      loss = cross-entropy on them. Backbone and TPSM train; the CAM branch is frozen and not run.
    * stage 2: ``model.set_stage(2)``; ``model(x)`` returns the **CAM-branch logits** GAP(M_C);
      loss = cross-entropy on them. Backbone and TPSM are frozen (``requires_grad=False``) and stay
      in eval mode under ``model.train()``; only blocks 1 … L−2 and the CAM branch run.

    :meth:`forward_parts` computes any subset of the parts (the explainer uses both branches).

    Args:
        backbone: a timm VisionTransformer with a class token, at least 2 blocks, and a last block
            that is a standard timm ``Block``; its classifier is removed.
        num_classes: number of classes.
        u: the CDF token-selection parameter (paper: 0.65 on CUB; official configs 0.6 CUB-224,
            0.65 CUB-384, 0.95 ILSVRC).
        config: the factory arguments, stored in checkpoints so :func:`load_model` can rebuild it.
    """

    arch = "trt"

    def __init__(self, backbone: nn.Module, num_classes: int, u: float = 0.65,
                 config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        check_vit(backbone)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(backbone.blocks) < 2:
            raise ValueError(f"TRT needs a ViT with at least 2 blocks, got {len(backbone.blocks)}")
        self.selection = TokenSelection("cdf", u)
        backbone.reset_classifier(0)
        self.backbone = backbone
        last_block, norm, dim = backbone.blocks[-1], final_norm(backbone), backbone.embed_dim
        # TPSM; the new modules start from block L and the final norm, as the official code initialises them
        self.reattention = MaskedReAttentionBlock(last_block)
        self.importance_norm = copy.deepcopy(norm)
        self.importance_head = nn.Linear(dim, 1)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)  # timm's ViT classifier init
        nn.init.zeros_(self.head.bias)
        # CAM branch
        self.cam_block = copy.deepcopy(last_block)
        self.cam_norm = copy.deepcopy(norm)
        self.cam_head = Conv2dHead(dim, num_classes)
        self.num_classes = num_classes
        self.config = dict(config or {})
        self.set_stage(1)

    @property
    def u(self) -> float:
        return self.selection.value

    @property
    def stage(self) -> int:
        return self._stage

    def stage1_modules(self) -> Iterator[nn.Module]:
        """Backbone and TPSM: what stage 1 trains and stage 2 freezes."""
        yield from (self.backbone, self.reattention, self.importance_norm, self.importance_head, self.head)

    def stage2_modules(self) -> Iterator[nn.Module]:
        """The CAM branch: what stage 2 trains."""
        yield from (self.cam_block, self.cam_norm, self.cam_head)

    def set_stage(self, stage: int) -> "TRT":
        """Select the training stage: which parameters train and what :meth:`forward` returns.

        Args:
            stage: 1 (backbone + TPSM train, CAM branch frozen) or 2 (CAM branch trains, the rest
                frozen and kept in eval mode so dropout and drop path do not perturb its features).
        """
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 (backbone + TPSM) or 2 (CAM branch), got {stage!r}")
        self._stage = stage
        trained, frozen = ((self.stage1_modules(), self.stage2_modules()) if stage == 1
                           else (self.stage2_modules(), self.stage1_modules()))
        for module in trained:
            module.requires_grad_(True)
        for module in frozen:
            module.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "TRT":
        super().train(mode)
        if self._stage == 2:
            for module in self.stage1_modules():
                module.eval()
        return self

    def forward_parts(self, input_tensor: torch.Tensor, *, tpsm: bool = True, cam: bool = True,
                      selection: Optional[TokenSelection] = None) -> TRTOutput:
        """Run the parts of TRT that are asked for, sharing the backbone pass.

        Blocks 1 … L−2 always run; block L−1, the attention recording and TPSM only with ``tpsm``;
        the CAM branch (on block L−2's output, kept during the pass) only with ``cam``.

        Args:
            input_tensor: (B, C, H, W) images.
            tpsm: compute logits, m, b, λ and r.
            cam: compute M_C and its logits.
            selection: token selection to use instead of the model's CDF rule with ``u`` (ablations).
        """
        if not isinstance(input_tensor, torch.Tensor) or input_tensor.dim() != 4:
            shape = tuple(input_tensor.shape) if isinstance(input_tensor, torch.Tensor) else type(input_tensor).__name__
            raise ValueError(f"TRT expects a 4-D (B, C, H, W) image batch, got {shape}")
        if not (tpsm or cam):
            raise ValueError("nothing to compute: set tpsm=True and/or cam=True")
        layout = token_layout(self.backbone, tuple(input_tensor.shape[-2:]))
        blocks = self.backbone.blocks
        depth = len(blocks)
        parts: Dict[str, torch.Tensor] = {}
        recorder = CLSAttentionRecorder(self.backbone, range(depth - 1)) if tpsm else None
        try:
            tokens = embed_tokens(self.backbone, input_tensor)
            for block in blocks[: depth - 2]:
                tokens = block(tokens)
            if cam:
                parts.update(self._cam_branch(tokens, layout))
            if tpsm:
                tokens = blocks[depth - 2](tokens)
                parts.update(self._tpsm(tokens, recorder.total(), layout, selection or self.selection))
        finally:
            if recorder is not None:
                recorder.release()
        return TRTOutput(**parts)

    def _tpsm(self, tokens: torch.Tensor, attention_sum: torch.Tensor, layout: TokenLayout,
              selection_rule: TokenSelection) -> Dict[str, torch.Tensor]:
        """Token priority scoring on block L−1's output (B, P + n, D), given Σ_l a_l (B, n)."""
        attention = attention_sum / attention_sum.sum(dim=-1, keepdim=True)
        selection = selection_rule(attention)
        prefix, patches = split_tokens(tokens, layout)
        reattended = self.reattention(patches, selection)
        scores = self.importance_head(self.importance_norm(reattended)).squeeze(-1)
        importance = importance_weights(scores, selection)
        fusion_token = torch.einsum("bn,bnd->bd", importance.to(patches.dtype), patches)
        pair = torch.stack([prefix[:, 0], fusion_token], dim=1)
        logits = self.head(class_token_features(self.backbone, self.backbone.blocks[-1](pair)))
        return dict(logits=logits, attention=attention, selection=selection, importance=importance,
                    refined_attention=refine_attention(attention, selection, importance))

    def _cam_branch(self, tokens: torch.Tensor, layout: TokenLayout) -> Dict[str, torch.Tensor]:
        """CAM branch on block L−2's output (B, P + n, D)."""
        _, patches = split_tokens(self.cam_norm(self.cam_block(tokens)), layout)
        features = tokens_to_grid(patches, layout)
        cam_maps = self.cam_head(features)
        return dict(cam_logits=cam_maps.mean(dim=(2, 3)), cam_maps=cam_maps, cam_features=features)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """The logits the current stage trains on: TPSM logits in stage 1, GAP(M_C) in stage 2."""
        if self._stage == 1:
            return self.forward_parts(input_tensor, tpsm=True, cam=False).logits
        return self.forward_parts(input_tensor, tpsm=False, cam=True).cam_logits


@register_architecture("trt")
def create_trt(model_name: str, num_classes: int, pretrained: bool = False, u: float = 0.65,
               **timm_kwargs: Any) -> TRT:
    """Create a TRT model on a timm ViT.

    Args:
        model_name: any timm VisionTransformer name with a class token, e.g. ``deit_base_patch16_224``.
        num_classes: number of classes.
        pretrained: load the backbone's pretrained weights through timm (needs the hub or its cache);
            the new blocks and norms are copied from the loaded block L and final norm.
        u: CDF token-selection parameter (default 0.65, the paper's CUB value).
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``, ``drop_path_rate``, ``dynamic_img_size``, …).
    """
    backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **timm_kwargs)
    config = dict(model_name=model_name, num_classes=num_classes, u=u, **timm_kwargs)
    return TRT(backbone, num_classes, u=u, config=config)
