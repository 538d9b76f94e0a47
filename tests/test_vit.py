"""The ViT token layer: layout, grids, CLS attention rows against eager attention."""
import copy

import pytest
import torch
import torch.nn as nn
from pytorch_grad_cam import GradCAM

from conftest import tiny_vit
from timm.models.vision_transformer import Block, ResPostBlock

from tscam_explain.vit import (BlockTokenRecorder, CLSAttentionRecorder, ViTReshapeTransform, block_attention_gradient,
                               check_input, check_vit, split_tokens, token_layout, tokens_to_grid)

VARIANTS = {
    # name: (timm name, extra kwargs, input size, expected prefix tokens, expected grid)
    "deit_tiny": ("deit_tiny_patch16_224", dict(img_size=224, patch_size=16, depth=3, embed_dim=96, num_heads=3),
                  (224, 224), 1, (14, 14)),
    "deit_tiny_distilled": ("deit_tiny_distilled_patch16_224",
                            dict(img_size=224, patch_size=16, depth=3, embed_dim=96, num_heads=3), (224, 224), 2, (14, 14)),
    "reg_tokens": ("vit_base_patch16_224", dict(img_size=224, patch_size=16, depth=3, embed_dim=96, num_heads=3,
                                               reg_tokens=4, no_embed_class=True), (224, 224), 5, (14, 14)),
    "dynamic_224x320": ("vit_base_patch16_224", dict(img_size=224, patch_size=16, depth=3, embed_dim=96, num_heads=3,
                                                    dynamic_img_size=True), (224, 320), 1, (14, 20)),
}


def eager_cls_rows(model: nn.Module, x: torch.Tensor) -> list:
    """Independent reference: the attention matrices of a copy with eager attention (fused_attn=False)."""
    eager = copy.deepcopy(model)
    rows = []
    for block in eager.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, attn: rows.append(attn[:, :, 0].mean(dim=1)))
    with torch.no_grad():
        eager(x)
    return rows


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cls_rows_equal_eager_attention(variant):
    name, kwargs, size, prefix, grid = VARIANTS[variant]
    model = tiny_vit(name, **kwargs)
    assert all(block.attn.fused_attn for block in model.blocks)  # we must not need eager attention
    x = torch.randn(2, 3, *size)
    layout = token_layout(model, size)
    assert layout.num_prefix_tokens == prefix and layout.grid == grid
    with CLSAttentionRecorder(model) as recorder, torch.no_grad():
        model(x)
        rows = [recorder.rows[i] for i in range(len(model.blocks))]
        total = recorder.total()
    reference = eager_cls_rows(model, x)
    assert len(reference) == len(rows) == 3
    for ours, ref in zip(rows, reference):
        assert ours.shape == (2, grid[0] * grid[1])
        torch.testing.assert_close(ours, ref[:, prefix:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, sum(ref[:, prefix:] for ref in reference), rtol=1e-5, atol=1e-6)
    # fused attention is still on, and no global flag was touched
    assert all(block.attn.fused_attn for block in model.blocks)


def test_recorder_selected_blocks_and_release():
    model = tiny_vit(depth=4)
    x = torch.randn(1, 3, 64, 64)
    with CLSAttentionRecorder(model, blocks=[-2, -1]) as recorder, torch.no_grad():
        model(x)
        assert sorted(recorder.rows) == [2, 3]
    for block in model.blocks:
        assert not block.attn.q_norm._forward_hooks and not block.attn.k_norm._forward_hooks
    with pytest.raises(ValueError, match="out of range"):
        CLSAttentionRecorder(model, blocks=[4])


def test_tokens_to_grid_is_row_major():
    model = tiny_vit()
    layout = token_layout(model, (64, 64))
    tokens = torch.arange(1 + 64, dtype=torch.float32)[None, :, None].expand(1, -1, 3)
    prefix, patches = split_tokens(tokens, layout)
    grid = tokens_to_grid(patches, layout)
    assert prefix.shape == (1, 1, 3)
    assert grid.shape == (1, 3, 8, 8)
    assert grid[0, 0, 0, 1] == 2 and grid[0, 0, 1, 0] == 1 + 8  # (row, col) → 1 + row*8 + col


def test_reshape_transform_with_grad_cam_on_dynamic_non_square_input():
    model = tiny_vit("vit_base_patch16_224", dynamic_img_size=True, reg_tokens=2)
    transform = ViTReshapeTransform(model)
    x = torch.randn(2, 3, 48, 80)
    with GradCAM(model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=transform) as cam:
        maps = cam(x, None)
    assert maps.shape == (2, 48, 80)
    assert transform.grid == (6, 10)
    transform.release()
    assert not model.patch_embed._forward_hooks


def test_non_vit_model_is_a_type_error():
    with pytest.raises(TypeError, match="expected a timm VisionTransformer"):
        check_vit(nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)))


@pytest.mark.parametrize("bad, error, message", [
    (torch.randn(3, 64, 64), ValueError, "4-D"),
    (torch.randn(1, 4, 64, 64), ValueError, "4 channels, the model expects 3"),
    (torch.full((1, 3, 64, 64), float("nan")), ValueError, "NaN"),
    (torch.randn(1, 3, 96, 96), ValueError, "does not match the model's img_size"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.long), TypeError, "floating-point"),
])
def test_bad_input(bad, error, message):
    with pytest.raises(error, match=message):
        check_input(tiny_vit(), bad)


@pytest.mark.parametrize("variant", ["deit_tiny_distilled", "dynamic_224x320"])
def test_attention_recorder_rebuilds_eager_attention_and_its_gradient(variant):
    """A_h from the recorded q, k and ∂L/∂A_h = (∂L/∂O_h) V_hᵀ equal eager attention and autograd through it."""
    from eager_baselines import eager_copy
    from tscam_explain.vit import AttentionRecorder
    name, kwargs, size, _, _ = VARIANTS[variant]
    model = tiny_vit(name, **kwargs)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    eager = eager_copy(model)
    attentions = []
    for block in eager.blocks:
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, attn: attentions.append(attn))
    expected_grads = torch.autograd.grad(eager(x)[:, 3].sum(), attentions)
    with AttentionRecorder(model, values=True, outputs=True) as recorder:
        logits = model(x.clone().requires_grad_(True))
    assert not any(block.attn.q_norm._forward_hooks or block.attn.k_norm._forward_hooks for block in model.blocks)
    records = [recorder.records[index] for index in range(len(model.blocks))]
    output_grads = torch.autograd.grad(logits[:, 3].sum(), [record.output for record in records])
    for record, output_grad, attention, expected in zip(records, output_grads, attentions, expected_grads):
        for heads in (slice(0, record.num_heads), slice(1, 2)):
            torch.testing.assert_close(record.probabilities(heads), attention[:, heads], rtol=1e-5, atol=1e-6)
            gradient = record.probability_gradient(output_grad, heads)
            torch.testing.assert_close(gradient, expected[:, heads], rtol=1e-4, atol=1e-5 * expected.abs().max().item())


class SubclassedBlock(Block):
    """timm's Block under another type: block_attention_gradient's general path (the block re-run as a module)."""


def _eager_block_gradients(block: nn.Module, tokens: torch.Tensor, output_grad: torch.Tensor):
    """Independent reference: the block run with eager attention (a copy, fused_attn=False), autograd through
    the attention weights read at attn_drop."""
    eager = copy.deepcopy(block)
    eager.attn.fused_attn = False
    seen = []
    eager.attn.attn_drop.register_forward_hook(lambda _m, _i, attn: seen.append(attn))
    tokens = tokens.clone().requires_grad_(True)
    attention_grad, input_grad = torch.autograd.grad(eager(tokens), [seen[0], tokens], output_grad)
    return seen[0], attention_grad, input_grad


@pytest.mark.parametrize("block_fn", [Block, SubclassedBlock, ResPostBlock], ids=["standard", "subclass", "res_post"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense_gradient", "class_token_gradient"])
def test_block_attention_gradient_equals_eager_autograd(block_fn, sparse):
    """Each block recomputed from the recorded tokens: A, ∂L/∂A and ∂L/∂tokens equal eager autograd; with a
    gradient on the class token only, the rows reported are that one and the eager gradient is zero elsewhere."""
    model = tiny_vit("deit_tiny_distilled_patch16_224", block_fn=block_fn, init_values=0.5, qk_norm=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with BlockTokenRecorder(model) as recorder, torch.no_grad():
        model(x)
    tokens = recorder.tokens
    assert sorted(tokens) == list(range(len(model.blocks) + 1)) and not model.blocks[0]._forward_pre_hooks
    for index, block in enumerate(model.blocks):
        torch.testing.assert_close(tokens[index + 1], block(tokens[index]))
        output_grad = torch.randn(tokens[index].shape, generator=torch.Generator().manual_seed(index))
        if sparse:
            output_grad[:, 1:] = 0
        step = block_attention_gradient(model, index, tokens[index], output_grad, input_grad=True)
        attention, expected_grad, expected_input_grad = _eager_block_gradients(block, tokens[index], output_grad)
        rows = [0] if sparse and block_fn is Block else list(range(tokens[index].shape[1]))
        assert step.rows.tolist() == rows
        torch.testing.assert_close(step.probabilities, attention[:, :, rows], rtol=1e-5, atol=1e-6)
        scale = expected_grad.abs().max().item()
        torch.testing.assert_close(step.gradient, expected_grad[:, :, rows], rtol=1e-4, atol=1e-5 * scale)
        assert set(expected_grad.abs().sum(dim=(0, 1, 3)).nonzero()[:, 0].tolist()) <= set(rows)
        scale = expected_input_grad.abs().max().item()
        torch.testing.assert_close(step.input_grad, expected_input_grad, rtol=1e-4, atol=1e-5 * scale)
        without_input = block_attention_gradient(model, index, tokens[index], output_grad)
        assert without_input.input_grad is None
        torch.testing.assert_close(without_input.gradient, step.gradient)
    assert all(not block._forward_hooks and not block.attn.qkv._forward_hooks for block in model.blocks)


def test_block_token_recorder_keeps_the_positions_asked_for_and_refuses_others():
    model = tiny_vit()
    with BlockTokenRecorder(model, positions=[0, 2]) as recorder, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert sorted(recorder.tokens) == [0, 2] and recorder.tokens[2].shape == (1, 65, 64)
    assert not model.blocks[-1]._forward_hooks and not model.blocks[0]._forward_pre_hooks
    with pytest.raises(ValueError, match=r"token positions must lie in 0\.\.2"):
        BlockTokenRecorder(model, positions=[3])


def test_head_groups_cover_every_head_once_and_bound_the_matrices(monkeypatch):
    import tscam_explain.vit as vit
    record = vit.AttentionRecord(scale=1.0, query=torch.zeros(2, 5, 10, 4))
    assert list(record.head_groups()) == [slice(0, 5)]
    monkeypatch.setattr(vit, "HEAD_GROUP_ELEMENTS", 2 * 100 * 2)  # two heads' (B, N, N) per group
    assert list(record.head_groups()) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    monkeypatch.setattr(vit, "HEAD_GROUP_ELEMENTS", 1)
    assert len(list(record.head_groups())) == 5


def test_attention_recorder_streams_blocks_and_refuses_bad_options():
    from tscam_explain.vit import AttentionRecorder
    model = tiny_vit()
    seen = []
    with AttentionRecorder(model, blocks=[-1], on_attention=lambda index, record: seen.append((index, record))):
        model(torch.randn(1, 3, 64, 64))
    assert [index for index, _ in seen] == [1] and seen[0][1].key.shape == (1, 2, 65, 32)
    with pytest.raises(ValueError, match="on_attention"):
        AttentionRecorder(model, outputs=True, on_attention=lambda *_: None)
    model.set_grad_checkpointing(True)
    with pytest.raises(ValueError, match="gradient checkpointing"):
        AttentionRecorder(model, outputs=True)
