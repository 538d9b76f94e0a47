"""The shipped models: they load, their cards are complete, and they classify a fresh generated set well.

Also the build command, end to end on a small generated set (the same code path that made them)."""
import json

import numpy as np
import pytest
import torch

import tscam_explain.pretrained.build as build_module
from tscam_explain import list_pretrained, load_pretrained, model_card
from tscam_explain.checkpoint import load_file
from tscam_explain.models import TRT, TSCAM
from tscam_explain.pretrained import PRETRAINED_DIR, open_model
from tscam_explain.synth import generate
from tscam_explain.vit import input_config

SHIPPED = ("tscam-synth", "trt-synth", "vit-synth")
#: accuracy floor on a generated set the models never saw (the cards report ≥ 90 % on 1000 images)
FLOOR = 85.0
FRESH_SEED, FRESH_IMAGES = 12345, 200


def test_every_shipped_model_is_listed_with_a_card():
    assert set(SHIPPED) <= set(list_pretrained())
    for name in SHIPPED:
        card = model_card(name)
        assert card["name"] == name and card["commands"] and card["stages"]
        assert card["train_data"]["seed"] != card["test_data"]["seed"]
        test, random_init = card["metrics"]["test"], card["metrics"]["random_init_test"]
        assert test["top1_cls"] >= 90.0, name
        assert test["top1_cls"] > random_init["top1_cls"] + 50, name
        # a few MB each, stored in float16
        path = PRETRAINED_DIR / f"{name}.pt"
        assert path.stat().st_size < 8 * 2 ** 20
        record = load_file(path)
        floats = [value for value in record["state_dict"].values() if value.is_floating_point()]
        assert floats and all(value.dtype == torch.float16 for value in floats)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_classifies_a_fresh_generated_set(name):
    model = load_pretrained(name)
    assert {"tscam-synth": TSCAM, "trt-synth": TRT}.get(name, torch.nn.Module) in type(model).__mro__
    assert all(p.dtype == torch.float32 for p in model.parameters())
    config = input_config(model.backbone if hasattr(model, "backbone") else model)
    mean, std = torch.tensor(config["mean"])[:, None, None], torch.tensor(config["std"])[:, None, None]
    size = config["input_size"][-1]
    samples = [generate(FRESH_SEED, index, size) for index in range(FRESH_IMAGES)]
    images = torch.stack([(torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 - mean) / std for s in samples])
    labels = torch.tensor([s.label for s in samples])
    with torch.no_grad():
        predictions = torch.cat([model(batch).argmax(dim=1) for batch in images.split(50)])
    accuracy = 100.0 * (predictions == labels).float().mean().item()
    assert accuracy >= FLOOR, f"{name}: {accuracy:.1f} % on {FRESH_IMAGES} fresh images"


def test_unknown_names_and_missing_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown pretrained model 'nope'"):
        load_pretrained("nope")
    with pytest.raises(FileNotFoundError, match="neither a shipped model"):
        open_model(tmp_path / "missing.pt")


def test_build_command_end_to_end_on_a_small_set(tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "TRAIN_DATA", {"seed": 1, "images": 24, "size": 96})
    monkeypatch.setattr(build_module, "TEST_DATA", {"seed": 2, "images": 12, "size": 96})
    path = build_module.build("trt-synth", data_dir=tmp_path / "data", runs_dir=tmp_path / "runs",
                              out_dir=tmp_path / "out", device="cpu",
                              extra=("--epochs", "1", "--batch-size", "8", "--val-fraction", "0.25"))
    card = json.loads(path.with_suffix(".json").read_text())
    assert [stage["recipe"]["name"] for stage in card["stages"]] == ["trt-stage1", "trt-stage2"]
    assert card["commands"][1].startswith("tscam-explain train --recipe trt-stage1")
    assert "--stage1" in card["commands"][2] and "trt-synth-stage1/best.pt" in card["commands"][2]
    assert set(card["metrics"]["test"]) == {"top1_cls", "gt_known", "top1_loc", "MaxBoxAcc", "MaxBoxAccV2", "PxAP"}
    model = open_model(path)
    assert isinstance(model, TRT) and model.config["embed_dim"] == 96
    reference = torch.load(tmp_path / "runs" / "trt-synth" / "best.pt", weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():  # the shipped weights are the run's best.pt, in float16
        assert np.allclose(value.numpy(), reference[key].half().float().numpy()), key


def test_evaluate_and_explain_take_a_shipped_name(tmp_path, capsys):
    from tscam_explain.cli import main
    from tscam_explain.synth import write_dataset

    data = write_dataset(tmp_path / "set", 8, seed=31, size=96)
    assert main(["evaluate", "--checkpoint", "tscam-synth", "--data", str(data), "--dataset-format", "cub",
                 "--protocol", "maxboxacc", "--num-workers", "0", "--no-progress", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["dataset"]["images"] == 8 and report["settings"]["input_size"] == [96, 96]
    assert main(["explain", "--checkpoint", "trt-synth", "--explainers", "trt", "--out", str(tmp_path / "ex")]) == 0
    assert "trt" in capsys.readouterr().out
