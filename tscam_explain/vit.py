"""The one module that knows timm Vision Transformer internals.

Everything else in tscam-explain goes through these functions for:

* the token layout: how many prefix tokens (CLS, distillation, registers) precede the patch tokens,
  and the patch grid for a given input size (``dynamic_img_size`` and non-square inputs included);
* moving between token sequences and (B, D, gh, gw) grids;
* running the pieces of a ViT forward (embedding, blocks, final norm, the model's own classifier);
* running one block with a custom attention normalisation (:func:`block_forward_with_softmax`);
* capturing every block's CLS attention row with timm's fused attention kept on
  (:class:`CLSAttentionRecorder`);
* recording each block's q, k, v and attention output, also with fused attention kept, to rebuild
  attention weights and their gradients (:class:`AttentionRecorder`);
* recording the token sequences between the blocks (:class:`BlockTokenRecorder`) and back-propagating
  through one block at a time from them, to the block's attention weights
  (:func:`block_attention_gradient`): gradient methods without keeping every block's activations;
* the ``reshape_transform`` pytorch-grad-cam needs for ViTs (:class:`ViTReshapeTransform`) and the
  ablation layer of its AblationCAM (:class:`ViTAblationLayer`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_grad_cam.ablation_layer import AblationLayer
from timm.data import resolve_data_config
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block, LayerScale, VisionTransformer

__all__ = [
    "TokenLayout",
    "CLSAttentionRecorder",
    "AttentionRecord",
    "AttentionRecorder",
    "BlockTokenRecorder",
    "BlockAttentionGradient",
    "block_attention_gradient",
    "ViTReshapeTransform",
    "ViTAblationLayer",
    "check_vit",
    "check_input",
    "token_layout",
    "split_tokens",
    "tokens_to_grid",
    "embed_tokens",
    "token_class_scores",
    "token_class_contributions",
    "resolve_block_indices",
    "final_norm",
    "check_standard_block",
    "class_token_features",
    "block_forward_with_softmax",
    "input_config",
]


@dataclass(frozen=True)
class TokenLayout:
    """Where the patch tokens sit in a ViT's token sequence for one input size.

    Args:
        num_prefix_tokens: CLS + distillation + register tokens before the patches.
        grid: patch grid (rows, cols); patches follow the prefix row-major.
    """

    num_prefix_tokens: int
    grid: Tuple[int, int]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


def check_vit(model: nn.Module, *, needs_class_token: bool = True) -> VisionTransformer:
    """Return ``model`` if it is a ViT these tools support, else raise ``TypeError``.

    Supported: timm ``VisionTransformer`` and its subclasses (DeiT, DeiT-distilled, register-token
    models, ``dynamic_img_size`` models) whose blocks use timm's standard ``Attention`` with
    ``q_norm``/``k_norm`` modules.

    Args:
        model: the model to check.
        needs_class_token: whether the caller needs a CLS token (attention-based maps do).
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f"expected a timm VisionTransformer (e.g. timm.create_model('deit_small_patch16_224')), "
            f"got {type(model).__name__}"
        )
    for index, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        if attn is None or not all(hasattr(attn, name) for name in ("q_norm", "k_norm", "num_heads", "scale")):
            raise TypeError(
                f"block {index} of {type(model).__name__} has no timm Attention with q_norm/k_norm "
                f"(found {type(attn).__name__}); expected timm's standard ViT attention"
            )
    if needs_class_token and model.cls_token is None:
        raise TypeError(
            f"{type(model).__name__} has no class token (class_token=False); "
            "attention-based maps need the CLS attention row"
        )
    return model


def token_layout(model: VisionTransformer, input_size: Tuple[int, int]) -> TokenLayout:
    """Token layout of ``model`` for an input of ``input_size`` = (H, W).

    Raises ``ValueError`` when a fixed-size model is given another input size.
    """
    patch_embed = model.patch_embed
    if model.dynamic_img_size:
        grid = tuple(patch_embed.dynamic_feat_size(tuple(input_size)))
    else:
        expected = tuple(patch_embed.img_size)
        if tuple(input_size) != expected and getattr(patch_embed, "strict_img_size", True):
            raise ValueError(
                f"input size {tuple(input_size)} does not match the model's img_size {expected}; "
                "resize the input or create the model with dynamic_img_size=True"
            )
        grid = tuple(patch_embed.grid_size)
    return TokenLayout(num_prefix_tokens=model.num_prefix_tokens, grid=(int(grid[0]), int(grid[1])))


def input_config(model: VisionTransformer) -> Dict[str, Any]:
    """timm's data config of ``model`` (``input_size``, ``mean``, ``std``, ``interpolation``, …) with the
    model's own input size.

    Mean and std are the statistics the weights were trained with (ImageNet's for DeiT, 0.5/0.5 for
    e.g. ``vit_tiny_patch16_224``). The size is ``patch_embed.img_size``: timm's config keeps the
    pretrained 224² even for a model created with another ``img_size``, which a fixed-size model
    would then refuse.
    """
    config = dict(resolve_data_config({}, model=model))
    height, width = (int(side) for side in model.patch_embed.img_size)
    config["input_size"] = (int(model.patch_embed.proj.in_channels), height, width)
    return config


def check_input(model: VisionTransformer, input_tensor: torch.Tensor) -> TokenLayout:
    """Validate an image batch for ``model`` and return its token layout.

    Args:
        model: the ViT that will see the batch.
        input_tensor: float tensor (B, C, H, W).
    """
    if not isinstance(input_tensor, torch.Tensor):
        raise TypeError(f"input_tensor must be a torch.Tensor of shape (B, C, H, W), got {type(input_tensor).__name__}")
    if input_tensor.dim() != 4:
        raise ValueError(
            f"input_tensor must be 4-D (B, C, H, W), got shape {tuple(input_tensor.shape)}; "
            "add a batch dimension with input_tensor.unsqueeze(0)"
        )
    if input_tensor.shape[0] == 0:
        raise ValueError(f"input_tensor is an empty batch (shape {tuple(input_tensor.shape)}); expected at least "
                         "one image")
    channels = model.patch_embed.proj.in_channels
    if input_tensor.shape[1] != channels:
        raise ValueError(f"input_tensor has {input_tensor.shape[1]} channels, the model expects {channels}")
    if not input_tensor.is_floating_point():
        raise TypeError(f"input_tensor must be a floating-point tensor, got {input_tensor.dtype}")
    # the sum is finite only if every element is: one reduction, no full-size boolean temporary;
    # the element-wise check runs only to rule out an overflowing sum
    if not torch.isfinite(input_tensor.sum()) and not torch.isfinite(input_tensor).all():
        raise ValueError("input_tensor contains NaN or Inf values")
    return token_layout(model, tuple(input_tensor.shape[-2:]))


def split_tokens(tokens: torch.Tensor, layout: TokenLayout) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split (B, N, D) tokens into prefix tokens (B, P, D) and patch tokens (B, n, D)."""
    if tokens.shape[1] != layout.num_prefix_tokens + layout.num_patches:
        raise ValueError(
            f"expected {layout.num_prefix_tokens} prefix + {layout.num_patches} patch tokens, "
            f"got a sequence of {tokens.shape[1]}"
        )
    return tokens[:, : layout.num_prefix_tokens], tokens[:, layout.num_prefix_tokens:]


def tokens_to_grid(patch_tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """(B, n, D) row-major patch tokens → (B, D, gh, gw)."""
    batch, count, dim = patch_tokens.shape
    if count != layout.num_patches:
        raise ValueError(f"expected {layout.num_patches} patch tokens for grid {layout.grid}, got {count}")
    return patch_tokens.transpose(1, 2).reshape(batch, dim, *layout.grid)


def embed_tokens(model: VisionTransformer, input_tensor: torch.Tensor) -> torch.Tensor:
    """The token sequence that enters block 1: patch embedding, prefix tokens, position embedding."""
    tokens = model.patch_embed(input_tensor)
    tokens = model._pos_embed(tokens)
    tokens = model.patch_drop(tokens)
    return model.norm_pre(tokens)


def token_class_scores(model: VisionTransformer, tokens: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Score each token with the model's own classifier, for one class per image.

    This is the training-free semantic map: the pretrained head applied to every final
    (already ``model.norm``-ed) token instead of to the pooled token. Only the requested
    classes' rows of the head are used.

    Args:
        model: a timm ViT classifier.
        tokens: final tokens (B, n, D) after ``forward_features``.
        classes: (B,) class index per image.

    Returns:
        (B, n) scores.
    """
    tokens = model.fc_norm(tokens)
    heads: List[nn.Module] = [model.head]
    if getattr(model, "head_dist", None) is not None:
        heads.append(model.head_dist)  # DeiT-distilled averages its two heads at inference
    scores = tokens.new_zeros(tokens.shape[:2])
    for head in heads:
        if not isinstance(head, nn.Linear):
            raise TypeError(
                f"training-free maps need a linear classifier head, got {type(head).__name__}; "
                "give the model a num_classes > 0 or train a TS-CAM head"
            )
        weight = head.weight[classes]  # (B, D)
        scores = scores + torch.einsum("bnd,bd->bn", tokens, weight)
        if head.bias is not None:
            scores = scores + head.bias[classes][:, None]
    return scores / len(heads)


def token_class_contributions(model: VisionTransformer, tokens: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per-channel terms of :func:`token_class_scores` (bias left out): (B, n, D).

    Their sum over D is the score up to the bias; used for eigen smoothing.
    """
    tokens = model.fc_norm(tokens)
    heads = [model.head] + ([model.head_dist] if getattr(model, "head_dist", None) is not None else [])
    weight = sum(head.weight[classes] for head in heads) / len(heads)
    return tokens * weight[:, None, :]


def resolve_block_indices(model: VisionTransformer, blocks: Optional[Iterable[int]]) -> List[int]:
    """Normalise block indices (negative allowed; ``None`` = all blocks) to sorted positive ones."""
    depth = len(model.blocks)
    if blocks is None:
        return list(range(depth))
    resolved = set()
    for index in blocks:
        if not isinstance(index, int) or not -depth <= index < depth:
            raise ValueError(f"block index {index!r} out of range for a model with {depth} blocks")
        resolved.add(index % depth)
    if not resolved:
        raise ValueError("at least one attention block must be selected")
    return sorted(resolved)


def final_norm(model: VisionTransformer) -> nn.Module:
    """The LayerNorm a ViT applies to its final tokens before classification.

    ``model.norm`` normally; models that normalise after pooling (``fc_norm``) have an identity
    ``norm`` and the LayerNorm in ``fc_norm``.
    """
    return model.fc_norm if isinstance(model.norm, nn.Identity) else model.norm


def class_token_features(model: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """timm's classifier input for CLS pooling of a token sequence whose first token is CLS.

    Final ``norm`` on the tokens, the first token, ``fc_norm``, ``head_drop`` — the path of
    ``forward_features`` + ``forward_head`` without the classifier, for sequences (such as TRT's
    two-token one) that do not follow the model's own prefix layout.

    Args:
        model: the timm ViT whose norms are used.
        tokens: (B, N, D) with CLS first.

    Returns:
        (B, D).
    """
    return model.head_drop(model.fc_norm(model.norm(tokens)[:, 0]))


def check_standard_block(block: nn.Module) -> nn.Module:
    """Return ``block`` if it is timm's pre-norm ``Block`` with a standard ``Attention``, else raise ``TypeError``.

    Exact types, not subclasses: :func:`block_forward_with_softmax` re-implements exactly their forward.
    """
    if type(block) is not Block or type(getattr(block, "attn", None)) is not Attention:
        raise TypeError(
            f"expected a timm vision_transformer.Block with a standard Attention, got {type(block).__name__} "
            f"with {type(getattr(block, 'attn', None)).__name__}"
        )
    return block


def _split_heads(attn: nn.Module, qkv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, heads, N, head_dim) from ``attn.qkv``'s output (B, N, 3 · heads · head_dim), timm's
    layout, with q and k through the block's ``q_norm`` / ``k_norm``."""
    batch, count, _ = qkv.shape
    query, key, value = qkv.reshape(batch, count, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(query), attn.k_norm(key), value


def block_forward_with_softmax(block: nn.Module, tokens: torch.Tensor,
                               softmax: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run a timm ``Block`` with its attention weights computed by ``softmax`` instead of the softmax.

    Eager attention (the N×N matrix is formed), reusing all of the block's own modules: norms,
    qkv, q/k norms, scale, attention dropout, output norm and gate, projection, layer scales,
    drop paths and MLP. With ``softmax=lambda s: s.softmax(-1)`` it equals ``block(tokens)``.

    Args:
        block: a timm ``vision_transformer.Block`` with a standard ``Attention``.
        tokens: (B, N, D) input sequence.
        softmax: maps the scaled attention logits (B, heads, N, N) to attention weights of the same shape.

    Returns:
        (B, N, D) output sequence.
    """
    attn = check_standard_block(block).attn
    normed = block.norm1(tokens)
    query, key, value = _split_heads(attn, attn.qkv(normed))
    weights = attn.attn_drop(softmax((query * attn.scale) @ key.transpose(-2, -1)))
    attended = (weights.to(value.dtype) @ value).transpose(1, 2).flatten(2)
    attended = attn.norm(attended)
    gate = getattr(attn, "gate", None)  # the gated variant exists in recent timm releases only
    if gate is not None:
        attended = attended * gate(normed).sigmoid()
    attended = attn.proj_drop(attn.proj(attended))
    tokens = tokens + block.drop_path1(block.ls1(attended))
    return tokens + block.drop_path2(block.ls2(block.mlp(block.norm2(tokens))))


class CLSAttentionRecorder:
    """Captures each chosen block's CLS attention row over the patch tokens.

    Forward hooks on ``attn.q_norm`` and ``attn.k_norm`` see q and k (B, heads, N, head_dim)
    while timm keeps its fused ``scaled_dot_product_attention``: the row
    ``mean_heads softmax(scale * q_cls · kᵀ)`` costs O(N·D) per block and no N×N matrix is formed.
    (Hooks on ``attn_drop`` would see nothing under the fused path; flipping timm's global
    ``set_fused_attn`` would change the user's model everywhere.)

    Use as a context manager or call :meth:`release`. After each forward, :attr:`rows` maps
    block index → (B, n) float32 attention over the patch tokens.

    Args:
        model: a timm ViT with a class token.
        blocks: indices of the blocks to record (negative allowed); ``None`` records all.
    """

    def __init__(self, model: VisionTransformer, blocks: Optional[Sequence[int]] = None) -> None:
        check_vit(model)
        self.num_prefix_tokens = model.num_prefix_tokens
        self.block_indices = resolve_block_indices(model, blocks)
        self.rows: Dict[int, torch.Tensor] = {}
        self._query: Dict[int, torch.Tensor] = {}
        self._handles = []
        for index in self.block_indices:
            attn = model.blocks[index].attn
            self._handles.append(attn.q_norm.register_forward_hook(self._save_query(index)))
            self._handles.append(attn.k_norm.register_forward_hook(self._attend(index, attn.scale)))

    def _save_query(self, index: int):
        def hook(_module: nn.Module, _inputs, query: torch.Tensor) -> None:
            self._query[index] = query[:, :, 0].detach()

        return hook

    def _attend(self, index: int, scale: float):
        def hook(_module: nn.Module, _inputs, keys: torch.Tensor) -> None:
            # float32 so that a bf16/fp16 model does not flatten the row, and with autocast off, which
            # would otherwise run the float32 product below in bf16 again
            query = self._query.pop(index).float()
            keys = keys.detach().float()
            with torch.autocast(keys.device.type, enabled=False):
                # one matmul per head: k is a strided view into timm's qkv output, and a single batched
                # product over (batch, heads) would first copy all of k (a forward-sized temporary);
                # per head, the batch stride is uniform and the product reads k in place
                logits = torch.stack([keys[:, head] @ query[:, head, :, None] for head in range(keys.shape[1])],
                                     dim=1)
                row = (logits[..., 0] * scale).softmax(dim=-1).mean(dim=1)
            self.rows[index] = row[:, self.num_prefix_tokens:]

        return hook

    def total(self) -> torch.Tensor:
        """Sum of the recorded rows, (B, n): the official TS-CAM A* (the paper averages; same after min-max)."""
        if len(self.rows) != len(self.block_indices):
            raise RuntimeError(
                f"recorded {len(self.rows)} of {len(self.block_indices)} blocks; run a forward pass first"
            )
        rows = iter(self.rows[index] for index in self.block_indices)
        total = next(rows).clone()
        for row in rows:
            total += row
        return total

    def clear(self) -> None:
        self.rows.clear()
        self._query.clear()

    def release(self) -> None:
        """Remove the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def __enter__(self) -> "CLSAttentionRecorder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


#: the most elements of one head group's N × N matrices (16 MiB of float32), see :meth:`AttentionRecord.head_groups`
HEAD_GROUP_ELEMENTS = 4 * 2 ** 20


@dataclass
class AttentionRecord:
    """What one block's attention computed in one forward pass, for rebuilding its attention without eager attention.

    Attributes:
        scale: the block's ``attn.scale``.
        query: (B, heads, N, head_dim) the output of ``attn.q_norm`` (detached).
        key: (B, heads, N, head_dim) the output of ``attn.k_norm`` (detached).
        value: (B, heads, N, head_dim) v, a view into ``attn.qkv``'s output (detached); when recorded.
        output: (B, N, heads·head_dim) the attention output O = A·V, heads side by side, as it enters
            ``attn.norm`` (``attn.proj`` in timm releases without it); in the autograd graph, so that
            ∂L/∂O can be taken; when recorded.
    """

    scale: float
    query: Optional[torch.Tensor] = None
    key: Optional[torch.Tensor] = None
    value: Optional[torch.Tensor] = None
    output: Optional[torch.Tensor] = None

    @property
    def num_heads(self) -> int:
        return self.query.shape[1]

    def head_groups(self) -> Iterator[slice]:
        """Consecutive heads, as few groups as keep one group's (B, heads, N, N) float32 matrix under
        :data:`HEAD_GROUP_ELEMENTS` (at least one head per group).

        One group for usual sizes (DeiT-S, batch 8: all 6 heads, 7 MiB), so a block costs a few large
        operations instead of a few per head (each operation also pays thread synchronisation); more
        groups for large inputs, so the N × N temporaries stay bounded.
        """
        batch, heads, count, _ = self.query.shape
        per_group = max(1, min(heads, HEAD_GROUP_ELEMENTS // (batch * count * count)))
        return (slice(start, min(start + per_group, heads)) for start in range(0, heads, per_group))

    def probabilities(self, heads: slice) -> torch.Tensor:
        """A = softmax(scale · q kᵀ) of the heads ``heads``, float32 (B, h, N, N): the weights timm's fused
        attention applies, rebuilt as its eager path computes them."""
        query = self.query[:, heads].float() * self.scale
        return (query @ self.key[:, heads].float().transpose(-2, -1)).softmax(dim=-1)

    def probability_gradient(self, output_grad: torch.Tensor, heads: slice) -> torch.Tensor:
        """∂L/∂A of the heads ``heads``, float32 (B, h, N, N), from ``output_grad`` = ∂L/∂O (B, N, heads·head_dim).

        O_h = A_h V_h, so ∂L/∂A_h = (∂L/∂O_h) V_hᵀ: the attention's gradient without eager attention.
        """
        batch, count, _ = output_grad.shape
        grad = output_grad.reshape(batch, count, self.num_heads, -1)[:, :, heads].transpose(1, 2).float()
        return grad @ self.value[:, heads].float().transpose(-2, -1)


class AttentionRecorder:
    """Records q, k (and v, the attention output) of each chosen block during a forward pass, with timm's
    fused ``scaled_dot_product_attention`` kept on.

    Forward hooks on ``attn.q_norm`` / ``attn.k_norm`` (q and k), ``attn.qkv`` (v) and forward pre-hooks on
    ``attn.norm`` or ``attn.proj`` (O = A·V). From q
    and k, :meth:`AttentionRecord.probabilities` rebuilds the attention weights (a group of heads at a time); from
    ∂L/∂O and v, :meth:`AttentionRecord.probability_gradient` gives their gradient. The hooks live only
    inside the ``with`` block (removed on exit, also on an exception); the records stay readable after it.

    Args:
        model: a timm ViT (:func:`check_vit`; a class token is not required).
        blocks: indices of the blocks to record (negative allowed); ``None``: all.
        values: record v.
        outputs: record the attention output O (needs a forward with gradients to differentiate).
        on_attention: ``on_attention(index, record)`` is called as soon as block ``index``'s q and k (and v)
            exist; the record is then dropped instead of kept, so that a method consuming one block at a
            time never holds all blocks' q and k.
        blocks_called_alone: the recorded blocks are run one by one (``model.blocks[i](tokens)``), not
            through the model's forward, so the model's gradient checkpointing (which its forward applies)
            does not keep ``outputs`` out of the graph.

    Example:
        >>> with AttentionRecorder(vit, values=True, outputs=True) as recorder:
        ...     logits = vit(images)
        >>> record = recorder.records[0]            # block 0
    """

    def __init__(self, model: VisionTransformer, blocks: Optional[Sequence[int]] = None, *, values: bool = False,
                 outputs: bool = False, on_attention: Optional[Callable[[int, AttentionRecord], None]] = None,
                 blocks_called_alone: bool = False) -> None:
        check_vit(model, needs_class_token=False)
        if on_attention is not None and outputs:
            raise ValueError("on_attention consumes each block's q and k at once; it cannot be combined with "
                             "outputs, which are kept for a backward pass")
        if outputs and not blocks_called_alone and getattr(model, "grad_checkpointing", False):
            raise ValueError("the model uses gradient checkpointing, which recomputes the blocks during backward, "
                             "so recorded tensors would not be in the graph; call model.set_grad_checkpointing(False)")
        self.block_indices = resolve_block_indices(model, blocks)
        self._scales = {index: model.blocks[index].attn.scale for index in self.block_indices}
        self.records: Dict[int, AttentionRecord] = {}
        self._on_attention = on_attention
        self._model = model
        self._options = (values, outputs)
        self._handles: List[Any] = []

    def __enter__(self) -> "AttentionRecorder":
        self.records.clear()
        values, outputs = self._options
        try:
            for index in self.block_indices:
                attn = self._model.blocks[index].attn
                if values:
                    self._handles.append(attn.qkv.register_forward_hook(self._save_value(index, attn)))
                self._handles.append(attn.q_norm.register_forward_hook(self._save_query(index)))
                self._handles.append(attn.k_norm.register_forward_hook(self._save_key(index)))
                if outputs:
                    # the attention output O = A·V enters attn.norm (identity unless scale_norm), then the gate
                    # and attn.proj; older timm releases have no attn.norm and feed O to attn.proj directly
                    target = attn.norm if isinstance(getattr(attn, "norm", None), nn.Module) else attn.proj
                    self._handles.append(target.register_forward_pre_hook(self._save_output(index)))
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(self, index: int) -> AttentionRecord:
        return self.records.setdefault(index, AttentionRecord(scale=self._scales[index]))

    def _save_value(self, index: int, attn: nn.Module):
        def hook(_module: nn.Module, _inputs, qkv: torch.Tensor) -> None:
            batch, count, _ = qkv.shape
            # timm's layout: (B, N, 3 · heads · head_dim), split as (3, heads, head_dim)
            value = qkv.detach().reshape(batch, count, 3, attn.num_heads, -1)[:, :, 2].transpose(1, 2)
            self._record(index).value = value

        return hook

    def _save_query(self, index: int):
        def hook(_module: nn.Module, _inputs, query: torch.Tensor) -> None:
            self._record(index).query = query.detach()

        return hook

    def _save_key(self, index: int):
        def hook(_module: nn.Module, _inputs, key: torch.Tensor) -> None:
            self._record(index).key = key.detach()
            if self._on_attention is not None:
                self._on_attention(index, self.records.pop(index))

        return hook

    def _save_output(self, index: int):
        def hook(_module: nn.Module, inputs) -> None:
            self._record(index).output = inputs[0]

        return hook


class BlockTokenRecorder:
    """Records the token sequences between a ViT's blocks during one forward pass, detached.

    Position ``l < L`` is block ``l``'s input, position ``L`` the last block's output (what the final norm
    receives). With them, :func:`block_attention_gradient` back-propagates through one block at a time,
    instead of one backward pass through a graph that holds every block's activations. Forward pre-hooks
    on the blocks (and a forward hook on the last one), removed on exit, also on an exception.

    Args:
        model: a timm ViT (:func:`check_vit`; a class token is not required).
        positions: the positions to keep (``None``: all ``L + 1``).

    Example:
        >>> with BlockTokenRecorder(vit) as recorder, torch.no_grad():
        ...     logits = vit(images)
        >>> recorder.tokens[0]                      # the tokens entering block 0
    """

    def __init__(self, model: VisionTransformer, positions: Optional[Iterable[int]] = None) -> None:
        check_vit(model, needs_class_token=False)
        depth = len(model.blocks)
        self.positions = sorted(set(range(depth + 1) if positions is None else positions))
        if not all(isinstance(position, int) and 0 <= position <= depth for position in self.positions):
            raise ValueError(f"token positions must lie in 0..{depth} for a model with {depth} blocks, "
                             f"got {self.positions}")
        self.tokens: Dict[int, torch.Tensor] = {}
        self._model = model
        self._handles: List[Any] = []

    def __enter__(self) -> "BlockTokenRecorder":
        self.tokens.clear()
        blocks = self._model.blocks
        try:
            for position in self.positions:
                if position < len(blocks):
                    hook = self._save(position, lambda _module, inputs: inputs[0])
                    self._handles.append(blocks[position].register_forward_pre_hook(hook))
                else:
                    hook = self._save(position, lambda _module, _inputs, output: output)
                    self._handles.append(blocks[-1].register_forward_hook(hook))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _save(self, position: int, select: Callable[..., torch.Tensor]):
        def hook(*args) -> None:
            self.tokens[position] = select(*args).detach()

        return hook


@dataclass
class BlockAttentionGradient:
    """One block's attention weights and a gradient through them (:func:`block_attention_gradient`).

    Attributes:
        rows: (R,) the query rows whose gradient can be non-zero: the rows where the block's output
            gradient is non-zero (every row, unless the loss reads a few tokens, e.g. a CLS-token head).
            At the other rows the gradient is exactly zero.
        probabilities: (B, heads, R, N) float32 attention weights A at those rows.
        gradient: (B, heads, R, N) float32 ∂L/∂A at those rows.
        input_grad: (B, N, D) ∂L/∂(the block's input tokens), when asked for.
    """

    rows: torch.Tensor
    probabilities: torch.Tensor
    gradient: torch.Tensor
    input_grad: Optional[torch.Tensor] = None


def block_attention_gradient(model: VisionTransformer, index: int, tokens: torch.Tensor, output_grad: torch.Tensor,
                             *, input_grad: bool = False) -> BlockAttentionGradient:
    """Run block ``index`` on its recorded input ``tokens`` and back-propagate ``output_grad`` = ∂L/∂(its
    output) to its attention weights (and its input).

    The gradient methods' memory-lean pass: a forward without gradients records the tokens between the
    blocks (:class:`BlockTokenRecorder`, timm's fused attention kept), then this recomputes one block at a
    time. Peak memory holds one block's activations instead of every block's.

    timm's standard ``Block`` (exact type, with its ``Attention``, ``Mlp`` and layer scales, in eval mode)
    is recomputed from its own modules with the attention weights formed in float32 at the rows that
    matter; the MLP's second linear layer is not re-run, its input gradient being ``grad @ fc2.weight``.
    Any other block the package accepts is re-run as a module (fused attention kept), A is rebuilt
    from its q, k and ∂L/∂A from ∂L/∂O and v (:class:`AttentionRecorder`).

    Args:
        model: the timm ViT.
        index: the block.
        tokens: (B, N, D) the block's input, as recorded.
        output_grad: (B, N, D) ∂L/∂(the block's output).
        input_grad: also return ∂L/∂tokens (for carrying the gradient down to the previous block).
    """
    block = model.blocks[index]
    if _has_standard_parts(block):
        return _standard_block_attention_gradient(block, tokens, output_grad, input_grad)
    tokens = tokens.detach().requires_grad_(True)
    with AttentionRecorder(model, [index], values=True, outputs=True, blocks_called_alone=True) as recorder, \
            torch.enable_grad():
        output = block(tokens)
    record = recorder.records[index]
    grads = torch.autograd.grad(output, [record.output, tokens] if input_grad else [record.output], output_grad)
    every_head = slice(0, record.num_heads)
    return BlockAttentionGradient(rows=torch.arange(tokens.shape[1], device=tokens.device),
                                  probabilities=record.probabilities(every_head),
                                  gradient=record.probability_gradient(grads[0], every_head),
                                  input_grad=grads[1] if input_grad else None)


def _has_standard_parts(block: nn.Module) -> bool:
    """Whether ``block`` is exactly timm's Block/Attention/Mlp with linear layers and diagonal layer scales,
    in eval mode: what :func:`_standard_block_attention_gradient` re-implements."""
    if not (type(block) is Block and type(block.attn) is Attention and type(block.mlp) is Mlp) or block.training:
        return False
    linears = (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2)
    return all(type(layer) is nn.Linear for layer in linears) and type(block.ls2) in (nn.Identity, LayerScale)


def _linear_without_weight_grad(layer: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    # with the weights detached autograd does not keep the layer's input (only weight gradients need it):
    # the gradient methods differentiate activations only
    return F.linear(inputs, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())


def _standard_block_attention_gradient(block: nn.Module, tokens: torch.Tensor, output_grad: torch.Tensor,
                                       input_grad: bool) -> BlockAttentionGradient:
    attn, mlp = block.attn, block.mlp
    count = tokens.shape[1]
    # rows whose output gradient is zero get zero attention gradient (attention mixes keys, not queries,
    # and everything after it acts token by token): only the others are recomputed
    rows = output_grad.detach().abs().amax(dim=(0, 2)).nonzero()[:, 0]
    every_row = len(rows) == count
    if len(rows) == 0:
        rows = rows.new_zeros(1)
    grad = output_grad if every_row else output_grad[:, rows]
    # output = middle + ls2(fc2(hidden)), ls2 diagonal and fc2 linear: ∂L/∂hidden = (γ ⊙ grad) W₂, so fc2
    # itself is not re-run
    scaled = grad * block.ls2.gamma if isinstance(block.ls2, LayerScale) else grad
    hidden_grad = scaled.to(mlp.fc2.weight.dtype) @ mlp.fc2.weight.detach()
    del scaled
    tokens = tokens.detach().requires_grad_(input_grad)
    # eval mode: the dropouts and drop paths are identities and are left out. Intermediates are not named
    # beyond their last use, so that each is freed as soon as autograd no longer needs it
    with torch.enable_grad():
        normed = block.norm1(tokens)
        query, key, value = _split_heads(attn, _linear_without_weight_grad(attn.qkv, normed))
        residual = tokens if every_row else tokens[:, rows]
        if not every_row:
            query, normed = query[:, :, rows], normed[:, rows]
        probabilities = (query.float() @ key.float().transpose(-2, -1)).mul_(attn.scale).softmax(dim=-1)
        del query, key
        if not input_grad:
            probabilities = probabilities.detach().requires_grad_(True)
        attended = attn.norm((probabilities @ value.float()).to(value.dtype).transpose(1, 2).flatten(2))
        del value
        if getattr(attn, "gate", None) is not None:  # the gated variant exists in recent timm releases only
            attended = attended * attn.gate(normed).sigmoid()
        del normed
        middle = residual + block.ls1(_linear_without_weight_grad(attn.proj, attended))
        del attended, residual
        hidden = mlp.norm(mlp.act(_linear_without_weight_grad(mlp.fc1, block.norm2(middle))))
    grads = torch.autograd.grad([middle, hidden], [probabilities, tokens] if input_grad else [probabilities],
                                [grad.to(middle.dtype), hidden_grad.to(hidden.dtype)])
    return BlockAttentionGradient(rows=rows, probabilities=probabilities.detach(), gradient=grads[0],
                                  input_grad=grads[1] if input_grad else None)


class ViTReshapeTransform:
    """``reshape_transform`` for pytorch-grad-cam on any timm ViT.

    pytorch-grad-cam's example transform hard-codes a 14×14 grid and one prefix token; this one
    drops all prefix tokens and, for ``dynamic_img_size`` models, reads the grid of the current
    input from a hook on ``patch_embed``. Call :meth:`release` (or let ``make_explainer`` tie it
    to the CAM object's own ``release``) to remove that hook.

    Args:
        model: the timm ViT whose token activations will be reshaped.
    """

    def __init__(self, model: VisionTransformer) -> None:
        check_vit(model, needs_class_token=False)
        self.num_prefix_tokens = model.num_prefix_tokens
        self.grid: Tuple[int, int] = tuple(model.patch_embed.grid_size)
        self.handle = None
        if model.dynamic_img_size:
            self.handle = model.patch_embed.register_forward_hook(self._record_grid)

    def _record_grid(self, _module: nn.Module, _inputs, output: torch.Tensor) -> None:
        # dynamic-size patch embeddings keep the NHWC layout, so the grid is in the shape
        self.grid = (int(output.shape[1]), int(output.shape[2]))

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        layout = TokenLayout(self.num_prefix_tokens, self.grid)
        _, patches = split_tokens(tokens, layout)
        # float32: pytorch-grad-cam turns activations and gradients into numpy arrays, which have no bf16
        return tokens_to_grid(patches, layout).float()

    def release(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class ViTAblationLayer(AblationLayer):
    """The ablation layer of pytorch-grad-cam's ``AblationCAM`` for any timm ViT.

    AblationCAM replaces the target layer (``blocks[-1].norm1``) by this layer while it re-runs the model
    with one channel ablated per copy of the image. pytorch-grad-cam's default ``AblationLayer`` indexes
    its input as (B, C, H, W) and fails on a token sequence; its ``AblationLayerVit`` ablates the channel
    in every token, the prefix tokens (CLS, distillation, registers) included, and sets it to
    ``min - 1e7`` for signed activations, which saturates the attention and overflows fp16.
    Here channel k is set to 0 in the patch tokens only: the k-th channel of the map that Grad-CAM-style
    methods weight, exactly as the paper ablates a feature map.

    Args:
        num_prefix_tokens: the tokens before the patches (``model.num_prefix_tokens``).
    """

    def __init__(self, num_prefix_tokens: int) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens

    def set_next_batch(self, input_batch_index: int, activations: torch.Tensor, num_channels_to_ablate: int) -> None:
        """Copies of image ``input_batch_index``'s tokens (N, D), one per channel to ablate next."""
        self.activations = activations[input_batch_index].detach().clone().unsqueeze(0).repeat(
            num_channels_to_ablate, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # pytorch-grad-cam calls the ablation layer directly (its AblationLayer overrides __call__)
        ablated = self.activations
        for copy, channel in enumerate(self.indices[: len(ablated)]):
            ablated[copy, self.num_prefix_tokens:, int(channel)] = 0
        return ablated
