"""The TS-CAM model, its heads and checkpoint files."""
import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from conftest import expect_file_error
from tscam_explain import TSCAM, create_tscam, load_model, save_model
from tscam_explain.models import HEADS, model_state

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


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _our_record(**changes) -> dict:
    torch.manual_seed(0)
    record = model_state(create_tscam("deit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=1,
                                      embed_dim=64, num_heads=1))
    record.update(changes)
    return record


def _flipped(content: bytes) -> bytes:
    """The file with 64 bytes inverted in the middle (inside a tensor's data): a damaged copy."""
    damaged = bytearray(content)
    middle = len(damaged) // 2
    damaged[middle:middle + 64] = bytes(byte ^ 0xFF for byte in damaged[middle:middle + 64])
    return bytes(damaged)


def _vit_state() -> dict:
    return timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, embed_dim=64, num_heads=1,
                             num_classes=3).state_dict()


# name → (file content, fragments of the message: what was found, what was expected)
BAD_FILES = {
    "empty": (lambda: b"", ["is empty (0 bytes)", "expected a complete file written by torch.save"]),
    "truncated": (lambda: _saved(_our_record())[:3000], ["truncated or damaged", "zip directory) is missing",
                                                        "in its 3000 bytes", "expected a complete file"]),
    "corrupt data": (lambda: _flipped(_saved(_our_record())), ["is corrupt", "does not match the CRC-32",
                                                               "expected a complete file"]),
    "text": (lambda: b"model weights: none\n", ["not a torch.save file", "starts with b'model weights:'",
                                                "expected a complete file"]),
    "numpy file": (lambda: b"\x93NUMPY\x01\x00v\x00{'descr'", ["not a torch.save file", "NUMPY"]),
    "another zip": (lambda: _zip_of({"weights.txt": "1 2 3"}), ["a zip archive holding ['weights.txt']",
                                                                "expected a complete file"]),
    "plain state dict": (lambda: _saved(_vit_state()), ["looks like a ViT classifier", "head.weight",
                                                        "not a tscam-explain model file either"]),
    "another architecture": (lambda: _saved(timm.create_model("resnet18", num_classes=3).state_dict()),
                             ["none of its keys is a DeiT / TS-CAM / TRT key", "conv1.weight",
                              "Expected official TS-CAM keys", "not a tscam-explain model file either"]),
    "unknown architecture": (lambda: _saved(_our_record(arch="swin")), ["architecture 'swin'",
                                                                        "expected one of ['trt', 'tscam', 'vit']"]),
    "weights of another config": (lambda: _saved(_our_record(config=dict(_our_record()["config"], embed_dim=32))),
                                  ["weights do not fit the 'tscam' model", "backbone.cls_token (1, 1, 64) instead of "
                                   "(1, 1, 32)", "expected the state dict save_model stored"]),
    "a missing weight": (lambda: _saved(_our_record(state_dict={k: v for k, v in _our_record()["state_dict"].items()
                                                                if k != "head.conv.bias"})),
                         ["missing head.conv.bias"]),
    "no config": (lambda: _saved({key: value for key, value in _our_record().items() if key != "config"}),
                  ["without a valid ['config']", "found keys ['arch', 'format', 'state_dict']",
                   "expected format, arch, config and state_dict"]),
    "a bad config": (lambda: _saved(_our_record(config=dict(_our_record()["config"], depth="two"))),
                     ["does not build a 'tscam' model", "expected the factory arguments"]),
}


def _zip_of(entries: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in entries.items():
            archive.writestr(name, text)
    return buffer.getvalue()


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_every_kind_of_bad_model_file_gets_a_value_error_naming_it(tmp_path, case):
    content, fragments = BAD_FILES[case]
    path = tmp_path / "model.pt"
    path.write_bytes(content())
    expect_file_error(load_model, path, *fragments)


class _Payload:
    """Unpickling it would run code: create the marker directory."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("writer", ["torch.save", "torch.save legacy", "pickle"])
def test_a_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    record = {"format": "tscam-explain/model/v1", "payload": _Payload(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(record))
    else:
        torch.save(record, path, _use_new_zipfile_serialization=writer == "torch.save")
    with pytest.raises(ValueError, match="refused it|not a torch.save file") as refused:
        load_model(path)
    assert str(path) in str(refused.value)
    assert not marker.exists()
