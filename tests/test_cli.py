"""The command line: `tscam-explain explain` end to end (offline: the shipped model, saved and official files)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tscam_explain.cli import build_parser, main


def test_explain_writes_one_panel_per_explainer(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", "--explainers", "tscam,transattention,gradcam", "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out / "explain.png"))
    # the shipped vit-synth (96 px) on a generated image: input + three panels, each with a title strip
    assert grid.shape == (96 + 24, 4 * 96, 3)
    # panels differ from the input: the heat map is drawn on them
    assert np.abs(grid[24:, 96:192].astype(int) - grid[24:, :96].astype(int)).mean() > 10
    printed = capsys.readouterr().out
    assert "tscam" in printed and "gradcam" in printed and "explain.png" in printed


def test_explain_on_a_user_image_and_a_saved_tscam_model(tmp_path):
    from tscam_explain import create_tscam, save_model
    model = create_tscam("deit_tiny_patch16_224", num_classes=3, depth=2)
    save_model(model, tmp_path / "m.pt")
    Image.fromarray(np.full((300, 200, 3), 128, np.uint8)).save(tmp_path / "img.jpg")
    assert main(["explain", "--checkpoint", str(tmp_path / "m.pt"), "--image", str(tmp_path / "img.jpg"),
                 "--explainers", "tscam", "--target", "2", "--out", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "explain.png").size == (2 * 224, 224 + 24)


def test_explain_an_official_checkpoint_at_its_own_input_size(tmp_path, capsys):
    official = Path(__file__).parent / "data" / "official"
    for name, explainer in (("trt_fuse_tiny.pth", "trt"), ("tscam_tiny.pth", "tscam,transattention")):
        out = tmp_path / name
        argv = ["explain", "--checkpoint", str(official / name), "--explainers", explainer, "--out", str(out)]
        assert main(argv) == 0
        panels = 1 + len(explainer.split(","))
        assert Image.open(out / "explain.png").size == (panels * 48, 48 + 24)  # the tiny models take 48x48
        printed = capsys.readouterr().out
        assert f"{official / name}: official" in printed and "inferred: embed_dim 128" in printed


def test_unknown_explainer_and_missing_command_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown explainer 'nope'"):
        main(["explain", "--explainers", "nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
