"""Official TS-CAM and TRT checkpoints load as our models and give the official code's outputs.

``tests/data/official`` holds what the official code itself produced (docs/official.md says how): tiny
checkpoints in the authors' format (``{"epoch", "state_dict", "best_map"}``, keys prefixed ``module.``)
with seeded random weights, and the outputs their model code computed from them. Nothing here runs
the official code; the tests compare our models, loaded from those files, with its recorded outputs.
"""
import argparse
from pathlib import Path

import pytest
import timm
import torch

from tscam_explain import TRT, TSCAM, create_tscam, load_model, load_official, save_model
from tscam_explain.explainers import TransAttentionExplainer, TRTExplainer, TSCAMExplainer
from tscam_explain.models import OfficialCheckpoint
from tscam_explain.train.components import load_stage1

DATA = Path(__file__).parent / "data" / "official"
TSCAM_FILE, TRT_FILE = DATA / "tscam_tiny.pth", DATA / "trt_fuse_tiny.pth"
# float32 rounding of the same computation done in another order (fused vs eager attention, logsumexp)
CLOSE = dict(rtol=1e-5, atol=2e-5)
TARGETS = [3, 1, 0, 7]


def recorded(name: str) -> dict:
    return torch.load(DATA / name, weights_only=True)


def official_state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def trt_stage1_file(tmp_path: Path) -> Path:
    """What the official stage-1 run saved: the stage-2 file without camfuse_block (stage 2 freezes the rest),
    here as a bare state dict without the module. prefix (the other accepted layout)."""
    state = {key[len("module."):]: value for key, value in official_state(TRT_FILE).items()
             if not key.startswith("module.camfuse_block.")}
    path = tmp_path / "deit_trt_stage1.pth"
    torch.save(state, path)
    return path


def test_tscam_checkpoint_gives_the_official_logits_maps_and_attention():
    record = recorded("tscam_record.pt")["model"]
    model = load_official(TSCAM_FILE)
    assert isinstance(model, TSCAM) and not model.training
    images = record["images"]
    with torch.no_grad():
        output = model.forward_maps(images)
    torch.testing.assert_close(output.logits, record["logits"], **CLOSE)
    torch.testing.assert_close(output.semantic_maps, record["semantic_maps"], **CLOSE)
    with TransAttentionExplainer(model) as explainer:
        attention = explainer.attribute(images, TARGETS, upsample=False)
    torch.testing.assert_close(attention.flatten(1), record["attention_sum"], **CLOSE)
    with TSCAMExplainer(model) as explainer:
        maps = explainer.attribute(images, TARGETS, upsample=False)
    torch.testing.assert_close(maps, record["cams"][torch.arange(4), TARGETS], **CLOSE)


@pytest.mark.parametrize("u", [0.6, 0.95])
def test_trt_stage2_checkpoint_gives_every_official_intermediate(u):
    record = recorded("trt_record.pt")
    expected = record[u]["stage2"]
    model = load_official(TRT_FILE, u=u)
    assert isinstance(model, TRT) and model.u == u
    assert model.official.stage == 2 and model.official.cam_branch_trained
    with torch.no_grad():
        output = model.forward_parts(record["images"])
    for name in ("logits", "cam_logits", "cam_maps", "attention", "importance", "refined_attention"):
        torch.testing.assert_close(getattr(output, name), expected[name], **CLOSE, msg=lambda m: f"{name}: {m}")
    assert torch.equal(output.selection, expected["selection"].bool())
    assert 0 < output.selection.sum() < output.selection.numel()  # a real selection, not all or nothing
    with TRTExplainer(model) as explainer:
        maps = explainer.attribute(record["images"], TARGETS, upsample=False)
        torch.testing.assert_close(explainer.outputs, expected["logits"], **CLOSE)
    torch.testing.assert_close(maps, expected["cams"][torch.arange(4), TARGETS], **CLOSE)


@pytest.mark.parametrize("u", [0.6, 0.95])
def test_trt_stage1_checkpoint_warns_and_matches_the_official_stage1_model(tmp_path, u):
    expected = recorded("trt_record.pt")[u]["stage1"]
    path = trt_stage1_file(tmp_path)
    with pytest.warns(UserWarning, match="CAM branch is untrained"):
        model = load_official(path, u=u)
    assert model.official.stage == 1 and not model.official.cam_branch_trained
    assert model.official.official_arch.startswith("deit_trt_") and "fuse" not in model.official.official_arch
    with torch.no_grad():
        output = model.forward_parts(recorded("trt_record.pt")["images"])
        torch.testing.assert_close(model(recorded("trt_record.pt")["images"]), expected["logits"], **CLOSE)
    for name in ("logits", "attention", "importance"):
        torch.testing.assert_close(getattr(output, name), expected[name], **CLOSE)
    assert torch.equal(output.selection, expected["selection"].bool())
    # the official stage-1 map divides λ by Σλ = S / (S + 1e-6); ours (stage 2's formula) does not: 1e-6 apart
    torch.testing.assert_close(output.refined_attention, expected["refined_attention"], **CLOSE)
    # the CAM branch starts as the official stage-2 script starts it: block L and the final norm
    last = model.backbone.blocks[-1].state_dict()
    for key, value in model.cam_block.state_dict().items():
        assert torch.equal(value, last[key]), key
    assert torch.equal(model.cam_norm.weight, model.backbone.norm.weight)
    assert torch.equal(model.cam_norm.bias, model.backbone.norm.bias)


def test_load_model_reads_official_files_and_layouts_give_the_same_model(tmp_path):
    images = recorded("tscam_record.pt")["model"]["images"]
    reference = load_official(TSCAM_FILE)(images)
    state = official_state(TSCAM_FILE)
    bare = {key[len("module."):]: value for key, value in state.items()}
    layouts = {"bare.pth": bare, "prefixed.pth": state, "wrapped_bare.pth": {"state_dict": bare}}
    for name, content in layouts.items():
        torch.save(content, tmp_path / name)
        for loader in (load_official, load_model):
            torch.testing.assert_close(loader(tmp_path / name)(images), reference, rtol=0, atol=0)
    # and it saves as our own format, which loads back to the same model
    save_model(load_model(TSCAM_FILE), tmp_path / "ours.pt")
    torch.testing.assert_close(load_model(tmp_path / "ours.pt").eval()(images), reference, rtol=0, atol=0)


def test_what_was_inferred_is_reported():
    info = load_official(TSCAM_FILE).official
    assert isinstance(info, OfficialCheckpoint)
    assert info.architecture == dict(embed_dim=128, depth=2, num_heads=2, num_classes=8, img_size=48,
                                     patch_size=8, mlp_ratio=1.0, in_chans=3, qkv_bias=True)
    text = info.describe()
    assert str(TSCAM_FILE) in text and "deit_tscam_custom_patch8_48" in text
    assert "num_heads 2 (not stored in the file" in text and "img_size 48 from pos_embed" in text
    trt = load_official(TRT_FILE)  # no official config for 8 classes at 48x48: the paper's u
    assert trt.u == 0.65 and "u 0.65 (not stored in the file and no official config matches" in trt.official.describe()
    assert load_official(TRT_FILE, num_heads=4).official.architecture["num_heads"] == 4


@pytest.mark.parametrize("classes, side, patch, u", [(200, 224, 16, 0.6), (200, 384, 16, 0.65), (1000, 224, 16, 0.95)])
def test_trt_u_defaults_to_the_official_config_of_the_benchmark(tmp_path, classes, side, patch, u):
    state = {key[len("module."):]: value for key, value in official_state(TRT_FILE).items()}
    dim = state["pos_embed"].shape[-1]
    state["pos_embed"] = torch.zeros(1, 1 + (side // patch) ** 2, dim)
    state["patch_embed.proj.weight"] = torch.zeros(dim, 3, patch, patch)
    state["head.weight"], state["head.bias"] = torch.zeros(classes, dim), torch.zeros(classes)
    state["camfuse_block.cam_head.weight"] = torch.zeros(classes, dim, 3, 3)
    state["camfuse_block.cam_head.bias"] = torch.zeros(classes)
    torch.save({"state_dict": state}, tmp_path / "trt.pth")
    model = load_official(tmp_path / "trt.pth")
    assert model.u == u and model.official.architecture["img_size"] == side
    assert f"official config for {classes} classes at {side}x{side}" in model.official.describe()
    assert tuple(model.backbone.patch_embed.img_size) == (side, side)


def _expect_error(path: Path, *fragments: str, loader=load_official) -> str:
    with pytest.raises(ValueError) as caught:
        loader(path)
    message = str(caught.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_a_plain_vit_state_dict_is_refused_by_name(tmp_path):
    vit = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=1,
                            num_classes=5)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    _expect_error(tmp_path / "vit.pth", "ViT classifier", "head.weight", "head.bias", "Expected official TS-CAM keys")
    # DeiT's own release wraps it as {"model": ...}: load_model says what each format expects
    torch.save({"model": vit.state_dict()}, tmp_path / "deit.pth")
    _expect_error(tmp_path / "deit.pth", "not a tscam-explain model file", "ViT classifier", loader=load_model)


def test_our_own_format_truncated_and_empty_files_are_refused(tmp_path):
    save_model(create_tscam("deit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=1,
                            embed_dim=64, num_heads=1), tmp_path / "ours.pt")
    _expect_error(tmp_path / "ours.pt", "is a tscam-explain model file", "load it with load_model")
    content = TSCAM_FILE.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(content[: len(content) // 2])
    for loader in (load_official, load_model):
        _expect_error(tmp_path / "truncated.pth", "cannot read checkpoint", "truncated", loader=loader)
    (tmp_path / "empty.pth").write_bytes(b"")
    _expect_error(tmp_path / "empty.pth", "is empty (0 bytes)")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    _expect_error(tmp_path / "tensor.pth", "holds a Tensor")


def test_another_methods_checkpoint_is_refused(tmp_path):
    # the VGG16-CAM baseline both official repositories train (lib/models/vgg.py): features.*, conv6, fc
    vgg = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64),
           "conv6.weight": torch.zeros(1024, 512, 3, 3), "conv6.bias": torch.zeros(1024),
           "fc.weight": torch.zeros(200, 1024), "fc.bias": torch.zeros(200)}
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in vgg.items()}}, tmp_path / "vgg.pth")
    _expect_error(tmp_path / "vgg.pth", "another method's checkpoint", "features.0.weight", "conv6.weight")
    # TS-CAM's weights where TRT's are needed (trt-stage2 starts from a TRT stage-1 file)
    with pytest.raises(ValueError, match="holds a 'tscam' model; trt-stage2 needs"):
        load_stage1(TSCAM_FILE)
    # an official-looking file with keys of another architecture (timm's LayerScale)
    state = official_state(TSCAM_FILE)
    state["module.blocks.0.ls1.gamma"] = torch.ones(128)
    torch.save({"state_dict": state}, tmp_path / "extra.pth")
    _expect_error(tmp_path / "extra.pth", "keys did not map", "blocks.0.ls1.gamma")


def test_shapes_that_fit_no_deit_and_refused_pickles(tmp_path):
    state = official_state(TSCAM_FILE)
    state["module.pos_embed"] = torch.zeros(1, 36, 128)  # 35 patch tokens: no square grid
    torch.save({"state_dict": state}, tmp_path / "grid.pth")
    _expect_error(tmp_path / "grid.pth", "do not describe a square DeiT")
    state = {key: value for key, value in official_state(TSCAM_FILE).items() if ".blocks.1." not in key}
    state["module.head.weight"] = torch.zeros(8, 96, 3, 3)
    torch.save({"state_dict": state}, tmp_path / "width.pth")
    _expect_error(tmp_path / "width.pth", "do not fit the inferred architecture")
    # weights_only=True refuses arbitrary objects (an argparse.Namespace here)
    torch.save({"state_dict": official_state(TSCAM_FILE), "args": argparse.Namespace(lr=1)}, tmp_path / "args.pth")
    _expect_error(tmp_path / "args.pth", "cannot read checkpoint", "weights_only")
