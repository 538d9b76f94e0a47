"""``bench`` end to end on tiny models: the stored-map replay equals a direct evaluation, the shared
TS-CAM pass equals the separate explainers, the model is left as it was, the CLI writes its report."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tscam_explain import create_tscam, make_explainer, save_model
from tscam_explain.bench import BenchSettings, bench, bench_model, dataset_data, synth_data
from tscam_explain.cli import main
from tscam_explain.explainers import TSCAMExplainer, release_explainer
from tscam_explain.models import create_classifier
from tscam_explain.wsol import evaluate

SIZE = 32
SMALL = dict(batch_size=4, faithfulness_images=4, road_images=2, sanity_images=3, expensive_images=2, captum_images=2,
             captum_perturbations=2,
             road_combined_percentiles=(30, 70), deletion_steps=4, overlay_images=2, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_data(tmp_path_factory.mktemp("synth"), images=6, seed=4, size=SIZE)


def tiny_tscam():
    torch.manual_seed(0)
    return create_tscam("deit_tiny_patch16_224", num_classes=6, img_size=SIZE, patch_size=8, depth=2, embed_dim=32,
                        num_heads=2).eval()


def test_localisation_of_replayed_maps_equals_a_direct_evaluation(data):
    model = tiny_tscam()
    result = bench_model(model, "tiny", data, ["tscam", "transattention", "transcam", "gradcam"],
                         BenchSettings(**SMALL))
    rows = {row["explainer"]: row for row in result["rows"]}
    assert set(rows) == {"tscam", "transattention", "transcam", "gradcam"}
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for name, row in rows.items():
        explainer = make_explainer(name, model)
        try:
            direct = evaluate(explainer, data.make_reader("tscam", SIZE, mean, std), "tscam", cam_threshold=0.1,
                              progress=False, batch_size=4)
            boxes = evaluate(explainer, data.make_reader("maxboxacc", SIZE, mean, std), "maxboxacc", progress=False)
            pixels = evaluate(explainer, data.make_mask_reader("maxboxacc", SIZE, mean, std), "maxboxacc",
                              progress=False)
        finally:
            release_explainer(explainer)
        localization = row["localization"]
        assert localization["tscam"]["gt_known"] == direct.metrics["localization"]["gt_known"], name
        assert localization["tscam"]["gt_known_curve"] == direct.metrics["localization"]["gt_known_curve"], name
        assert localization["maxboxacc"]["MaxBoxAccV2"] == boxes.metrics["MaxBoxAccV2"], name
        assert localization["PxAP"] == pytest.approx(pixels.metrics["PxAP"], abs=1e-9), name
        assert row["cost"]["shared_pass"] == (name != "gradcam")
        assert row["cost"]["seconds_per_image"] > 0 and row["cost"]["x_forward"] > 0
        faithfulness = row["faithfulness"]
        assert 0 <= faithfulness["deletion_auc"] <= 1 and 0 <= faithfulness["insertion_auc"] <= 1
        assert 0 <= faithfulness["pointing_game"] <= 1
        assert faithfulness["images"] == {"deletion_insertion": 4, "road": 2, "captum": 2, "pointing_game": 6}
        assert faithfulness["infidelity"] >= -1e-6 and faithfulness["sensitivity_max"] >= 0
        assert row["sanity"]["images"] == 3
    # TransAttention is class-agnostic: its maps for another class are the same maps
    assert rows["transattention"]["sanity"]["random_logit_spearman"] == pytest.approx(1.0)


def test_the_shared_pass_gives_the_separate_explainers_maps():
    model = tiny_tscam()
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with TSCAMExplainer(model) as explainer:
        family = explainer.attribute_ablations(images, [1, 4, 0])
    for name, maps in family.items():
        with make_explainer(name, model) as explainer:
            assert torch.allclose(maps, explainer.attribute(images, [1, 4, 0]), atol=1e-6), name


def test_bench_leaves_the_model_as_it_was(data):
    model = tiny_tscam().train()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    bench_model(model, "tiny", data, ["tscam", "gradcam"], BenchSettings(**SMALL))
    assert model.training
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    assert not any(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                   for module in model.modules())


def test_bad_input_gets_clear_errors(data, tmp_path):
    model = tiny_tscam()
    with pytest.raises(ValueError, match="unknown explainer"):
        bench([model], data, explainers=["nosuchcam"], settings=BenchSettings(**SMALL))
    with pytest.raises(ValueError, match="do not apply"):
        bench_model(model, "tiny", data, ["trt"], BenchSettings(**SMALL))
    masks_only = dataset_data("wsolevaluation", data_root(data) / "metadata_masks" / "test",
                              image_dir=data_root(data) / "images", mask_dir=data_root(data) / "masks")
    with pytest.raises(ValueError, match="need box annotations"):
        bench_model(model, "tiny", masks_only, ["tscam"], BenchSettings(**SMALL))
    # without the box metrics, a mask-only dataset is fine
    result = bench_model(model, "tiny", masks_only, ["tscam"], BenchSettings(**{**SMALL, "metrics": ("cost", "sanity")}))
    assert "localization" not in result["rows"][0] and result["rows"][0]["sanity"]["images"] == 3
    with pytest.raises(ValueError, match="not among the models"):
        bench({"a": model}, data, explainers={"b": ["tscam"]}, settings=BenchSettings(**SMALL))
    with pytest.raises(ValueError, match="unknown metric families"):
        BenchSettings(metrics=("speed",))
    with pytest.raises(ValueError, match="captum_perturbations must be >= 2"):
        BenchSettings(captum_perturbations=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="not a folder"):
        main(["bench", "--out", str(tmp_path / "file")])


def data_root(data):
    return data.make_reader("maxboxacc", SIZE, (0.5,) * 3, (0.5,) * 3).records[0].image_path.parents[2]


def test_bench_command_end_to_end(tmp_path, capsys):
    torch.manual_seed(0)
    classifier = create_classifier("deit_tiny_patch16_224", 6, img_size=SIZE, patch_size=8, depth=2, embed_dim=32,
                                   num_heads=2)
    save_model(classifier, tmp_path / "vit.pt")
    save_model(tiny_tscam(), tmp_path / "tscam.pt")
    out = tmp_path / "report"
    assert main(["bench", "--model", str(tmp_path / "vit.pt"), "--model", str(tmp_path / "tscam.pt"),
                 "--explainers", "tscam,gradcam,scorecam", "--synth-images", "5", "--synth-size", str(SIZE),
                 "--batch-size", "4", "--faithfulness-images", "2", "--road-images", "1", "--sanity-images", "2",
                 "--expensive-images", "1", "--road-percentiles", "50", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| model | explainer |" in printed
    with open(out / "results.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["model"].split("/")[-1], row["explainer"]) for row in rows] == [
        ("vit.pt", "tscam"), ("vit.pt", "gradcam"), ("vit.pt", "scorecam"),
        ("tscam.pt", "tscam"), ("tscam.pt", "gradcam"), ("tscam.pt", "scorecam")]
    assert [row["images"] for row in rows] == ["5", "5", "1", "5", "5", "1"]
    assert all(float(row["MaxBoxAccV2"]) >= 0 and row["deletion_auc"] for row in rows)
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["road_combined_percentiles"] == [50.0]
    markdown = (out / "report.md").read_text()
    assert "wsolevaluation's protocol" in markdown and "overlays.png" in markdown
    for name in ("overlays", "bars_localization", "bars_faithfulness", "bars_sanity", "bars_cost", "gt_known_vs_iou",
                 "cost_vs_quality"):
        with Image.open(out / f"{name}.png") as image:
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 5, f"{name}.png is blank"


def test_cost_quality_labels_of_close_points_do_not_overlap():
    """Explainers of equal cost and quality (TS-CAM and its ablations) get labels stacked, not printed over
    each other; a label with room keeps its place just above its point."""
    import matplotlib.pyplot as plt
    from tscam_explain.bench.figures import _place_labels
    figure, axis = plt.subplots()
    points = [(1.0, 30.0, "tscam @a"), (1.0, 30.2, "transattention @a"), (50.0, 30.1, "scorecam @a"), (1.0, 10.0, "x")]
    for cost, quality, _ in points:
        axis.scatter([cost], [quality])
    axis.set_xscale("log")
    _place_labels(figure, axis, points)
    # each label's baseline in points: its point's height plus its offset
    baselines = {note.get_text(): axis.transData.transform(note.xy)[1] * 72 / figure.dpi + note.xyann[1]
                 for note in axis.texts}
    offsets = {note.get_text(): note.xyann[1] for note in axis.texts}
    plt.close(figure)
    assert baselines["tscam @a"] <= baselines["transattention @a"] - 9  # stacked below: a label's height apart
    assert offsets["transattention @a"] == offsets["scorecam @a"] == offsets["x"] == 3
