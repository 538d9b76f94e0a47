"""The TS-CAM model, its heads and checkpoint files."""
import os

import pytest
import torch
import torch.nn.functional as F

from tscam_explain import TSCAM, create_tscam, load_model, save_model
from tscam_explain.models import HEADS

TINY = dict(img_size=64, patch_size=8, depth=2, embed_dim=64, num_heads=2)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_logits_are_gap_of_semantic_maps_and_contributions_sum_to_maps(head):
    torch.manual_seed(0)
    model = create_tscam("deit_tiny_patch16_224", num_classes=5, head=head, **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.forward_maps(x)
        assert out.semantic_maps.shape == (2, 5, 8, 8) and out.features.shape == (2, 64, 8, 8)
        torch.testing.assert_close(out.logits, out.semantic_maps.mean(dim=(2, 3)))
        torch.testing.assert_close(model(x), out.logits)
        classes = torch.tensor([4, 1])
        terms = model.head.class_contributions(out.features, classes)
        bias = next(p for n, p in model.head.named_parameters() if n.endswith("bias"))[classes]
        torch.testing.assert_close(terms.sum(dim=1) + bias[:, None, None], out.semantic_maps[[0, 1], classes],
                                   rtol=1e-5, atol=1e-5)


def test_conv2d_head_is_a_3x3_conv_on_the_patch_grid():
    torch.manual_seed(0)
    model = create_tscam("deit_tiny_patch16_224", num_classes=3, **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens = model.backbone.forward_features(x)[:, 1:]  # final norm applied, CLS dropped
        grid = tokens.transpose(1, 2).reshape(1, 64, 8, 8)
        expected = F.conv2d(grid, model.head.conv.weight, model.head.conv.bias, padding=1)
        torch.testing.assert_close(model.forward_maps(x).semantic_maps, expected)


def test_backbone_classifier_is_dropped_and_cls_unused():
    model = create_tscam("deit_tiny_distilled_patch16_224", num_classes=3, **TINY)
    assert isinstance(model.backbone.head, torch.nn.Identity)
    assert model.backbone.num_classes == 0


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    torch.manual_seed(0)
    model = create_tscam("deit_tiny_patch16_224", num_classes=4, head="conv1d", drop_path_rate=0.1, **TINY).eval()
    path = tmp_path / "sub" / "model.pt"
    save_model(model, path)
    record = torch.load(path, weights_only=True)  # plain types only
    assert record["arch"] == "tscam" and record["config"]["head"] == "conv1d"
    loaded = load_model(path).eval()
    assert isinstance(loaded, TSCAM)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["model.pt"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_bad_checkpoint_and_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a tscam-explain model file"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown head"):
        create_tscam("deit_tiny_patch16_224", num_classes=3, head="mlp", **TINY)
    with pytest.raises(TypeError, match="expected a timm VisionTransformer"):
        create_tscam("resnet18", num_classes=3)
    with pytest.raises(TypeError, match="not a tscam-explain model"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.pt")
