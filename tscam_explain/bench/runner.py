"""``bench``: explainers side by side on one dataset — cost, localisation, faithfulness, sanity.

For each model, every explainer runs once over the images (ground-truth class as the target, as WSOL
evaluates); the maps it returns are kept and then

* scored for localisation by the harness (:func:`~tscam_explain.wsol.evaluate`), replayed through
  :class:`StoredMaps` so the model does not run again: the seeds' protocol (Top-1 / GT-known Loc at
  the fixed threshold, GT-known vs IoU, error analysis) and wsolevaluation's (MaxBoxAcc, MaxBoxAccV2
  with best thresholds, PxAP when the data has masks);
* upsampled to the input size as the explainer's own ``__call__`` would, for the energy-based
  pointing game, deletion / insertion, ROAD and the sanity checks (:mod:`.faithfulness`, :mod:`.sanity`).

Cost is timed batch by batch, interleaved with a plain forward pass of the same model on the same
batch, so the ratio "× forward" is taken within one run. TS-CAM and its two ablations share one
forward pass (:meth:`~tscam_explain.explainers.TSCAMExplainer.attribute_ablations`); each of them is
charged that pass.
"""
from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..captum import infidelity_and_sensitivity
from ..explainers import (TSCAMExplainer, canonical_name, dtype_policy, list_explainers, make_explainer,
                          registered_explainers, release_explainer, upsample_maps)
from ..models import backbone_of
from ..vit import input_config
from ..wsol import evaluate, explain_batch, maxboxacc_box, maxboxacc_scoremap, wsol_collate
from ..wsol.datasets import WSOLDataset
from .cost import fix_malloc_threshold, peak_memory_mib
from .faithfulness import ROAD_DEFAULTS, deletion_insertion, energy_pointing_game, road_scores
from .sanity import other_classes, randomized_copy, spearman

__all__ = ["BenchData", "BenchSettings", "StoredMaps", "bench_model", "default_explainers", "METRIC_FAMILIES",
           "BASELINES", "PER_IMAGE_EXPLAINERS"]

#: what ``bench`` can measure
METRIC_FAMILIES = ("cost", "localization", "faithfulness", "sanity")
#: pytorch-grad-cam's methods that run by default beside ours
BASELINES = ("gradcam", "layercam", "scorecam")
#: explainers that run the model tens to hundreds of times per image (once per feature map, region or
#: path step): only on ``expensive_images`` images
PER_IMAGE_EXPLAINERS = ("scorecam", "ablationcam", "shapleycam", "integratedgradients", "occlusion",
                        "noisetunnel-integratedgradients")
#: TS-CAM and its ablations, computed from one pass when more than one of them is asked for
_TSCAM_FAMILY = ("tscam", "transattention", "transcam")

ReaderFactory = Callable[[str, int, Sequence[float], Sequence[float]], WSOLDataset]


@dataclass(frozen=True)
class BenchSettings:
    """How much to measure, and how.

    Args:
        batch_size: images per forward pass.
        limit: use only the first ``limit`` images of the dataset (``None``: all).
        faithfulness_images: images for deletion / insertion (``None``: all).
        road_images: images for ROAD (its imputation solves a sparse system per image and percentile).
        sanity_images: images for the randomisation and random-logit checks.
        expensive_images: images for :data:`PER_IMAGE_EXPLAINERS` (Score-CAM, …).
        captum_images: images for Captum's infidelity and max-sensitivity (each runs the model, or for
            sensitivity the explainer, ``captum_perturbations`` times per image).
        captum_perturbations: Captum's ``n_perturb_samples`` for both (at least 2).
        deletion_steps: steps of deletion / insertion.
        blur_sigma: σ (pixels) of insertion's blurred start image.
        road_morf_percentile: ROAD most-relevant-first percentile (pytorch-grad-cam's default 80).
        road_lerf_percentile: ROAD least-relevant-first percentile (default 20).
        road_combined_percentiles: ROADCombined's percentiles (default 10 … 90).
        cam_threshold: the seeds' protocol threshold (default: the benchmark's, 0.1 CUB and the generated set).
        cam_curve_interval: wsolevaluation's threshold spacing.
        metrics: the families to measure, from :data:`METRIC_FAMILIES`.
        overlay_images: images shown per explainer in the overlay figure.
        seed: seed of the randomised model, the random logits and ROAD's imputation noise.
        progress: show progress bars.
    """

    batch_size: int = 32
    limit: Optional[int] = None
    faithfulness_images: Optional[int] = None
    road_images: int = 16
    sanity_images: int = 32
    expensive_images: int = 16
    captum_images: int = 8
    captum_perturbations: int = 4
    deletion_steps: int = 16
    blur_sigma: float = 5.0
    road_morf_percentile: float = ROAD_DEFAULTS["morf_percentile"]
    road_lerf_percentile: float = ROAD_DEFAULTS["lerf_percentile"]
    road_combined_percentiles: Tuple[float, ...] = ROAD_DEFAULTS["combined_percentiles"]
    cam_threshold: Optional[float] = None
    cam_curve_interval: float = 0.01
    metrics: Tuple[str, ...] = METRIC_FAMILIES
    overlay_images: int = 6
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics) - set(METRIC_FAMILIES))
        if unknown or not self.metrics:
            raise ValueError(f"unknown metric families {unknown or self.metrics}; expected some of {METRIC_FAMILIES}")
        if self.captum_perturbations < 2:
            raise ValueError(f"captum_perturbations must be >= 2, got {self.captum_perturbations}: Captum's "
                             "normalised infidelity is 0 with one perturbation")
        for name in ("batch_size", "road_images", "sanity_images", "expensive_images", "captum_images",
                     "deletion_steps"):
            if getattr(self, name) < (1 if name in ("batch_size", "deletion_steps") else 0):
                raise ValueError(f"{name} must be >= {1 if name in ('batch_size', 'deletion_steps') else 0}, "
                                 f"got {getattr(self, name)}")
        for name in ("limit", "faithfulness_images"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")


@dataclass
class BenchData:
    """Where the images come from: a reader per protocol, built for each model's input size and normalisation.

    Args:
        name: shown in reports.
        make_reader: ``make_reader(protocol, input_size, mean, std)`` → reader with boxes (``None``: no boxes).
        make_mask_reader: the same for a reader with masks (``protocol="maxboxacc"``), for PxAP (``None``: no masks).
        cam_threshold: the seeds' protocol threshold for this data (default: the benchmark's).
    """

    name: str
    make_reader: Optional[ReaderFactory]
    make_mask_reader: Optional[ReaderFactory] = None
    cam_threshold: Optional[float] = None

    def __post_init__(self) -> None:
        if self.make_reader is None and self.make_mask_reader is None:
            raise ValueError(f"dataset {self.name!r} has neither boxes nor masks; the bench needs one of them")

    @property
    def has_boxes(self) -> bool:
        return self.make_reader is not None


class StoredMaps:
    """An explainer that hands back maps computed earlier, in dataset order.

    :func:`~tscam_explain.wsol.evaluate` called with it scores stored maps without running the
    model again. It checks that each batch asks for the classes the maps were computed for.

    Args:
        maps: the maps of every image, as :func:`~tscam_explain.wsol.explain_batch` returned them.
        logits: (N, C) the logits of every image.
        classes: (N,) the class each map explains.
    """

    def __init__(self, maps: np.ndarray, logits: torch.Tensor, classes: torch.Tensor) -> None:
        if not len(maps) == len(logits) == len(classes):
            raise ValueError(f"got {len(maps)} maps, {len(logits)} logits and {len(classes)} classes")
        self.maps, self.logits, self.classes = maps, logits, classes
        self.position = 0
        self.outputs: Optional[torch.Tensor] = None

    def __call__(self, input_tensor: torch.Tensor, targets: Sequence[Any]) -> np.ndarray:
        start, stop = self.position, self.position + len(input_tensor)
        if stop > len(self.maps):
            raise IndexError(f"asked for images {start} … {stop - 1}; only {len(self.maps)} maps are stored")
        asked = [int(getattr(target, "category", target)) for target in targets]
        if asked != self.classes[start:stop].tolist():
            raise ValueError(f"images {start} … {stop - 1}: the stored maps explain classes "
                             f"{self.classes[start:stop].tolist()}, the batch asks for {asked}")
        self.position = stop
        self.outputs = self.logits[start:stop]
        return self.maps[start:stop]


def default_explainers(model: nn.Module) -> List[str]:
    """What ``bench`` runs on ``model`` by default: every explainer of ours that applies to it (and
    whatever later registrations add), and pytorch-grad-cam's :data:`BASELINES` where they apply."""
    applicable = set(list_explainers(model))
    return registered_explainers(model) + [name for name in BASELINES if name in applicable]


# --- the explainers a model runs ----------------------------------------------------------------------
class _Method:
    """One call per batch that yields the maps of one or more explainer names (a shared pass).

    The explainer is built for each call and released after it, so that its hooks never slow down
    (or change) the model's other forward passes: the plain forward it is compared with, and the
    perturbed forwards of the faithfulness metrics.
    """

    def __init__(self, names: Sequence[str], model: nn.Module) -> None:
        self.names = tuple(names)
        self.shared = len(self.names) > 1
        self.model = model
        self.per_image = self.names[0] in PER_IMAGE_EXPLAINERS

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> Tuple[Dict[str, np.ndarray], torch.Tensor]:
        """Maps (as the harness takes them) per name, and the logits."""
        if self.shared:
            with TSCAMExplainer(self.model) as explainer:
                family = explainer.attribute_ablations(images, classes.tolist(), upsample=False)
                logits = explainer.outputs.detach()
            return {name: family[name].detach().float().cpu().numpy() for name in self.names}, logits
        # Score-CAM prints a progress bar per image
        quiet = contextlib.redirect_stderr(io.StringIO()) if self.per_image else contextlib.nullcontext()
        explainer = make_explainer(self.names[0], self.model)
        try:
            with quiet:
                maps, logits = explain_batch(explainer, images, classes)
        finally:
            release_explainer(explainer)
        return {self.names[0]: maps}, logits


def _plan(model: nn.Module, names: Sequence[str]) -> List[List[str]]:
    """Group the names into calls: TS-CAM's family in one pass when two or more of it are asked for."""
    family = [name for name in names if name in _TSCAM_FAMILY]
    groups = [family] if len(family) > 1 and TSCAMExplainer.accepts(model) else [[name] for name in family]
    return groups + [[name] for name in names if name not in _TSCAM_FAMILY]


def _display_maps(maps: np.ndarray, size: Tuple[int, int], device: torch.device) -> torch.Tensor:
    """Maps at the input size in [0, 1], as the explainer's ``__call__`` returns them."""
    tensor = torch.from_numpy(np.ascontiguousarray(maps)).float().to(device)
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return upsample_maps(tensor, size)


def _timed(call: Callable[[], Any], device: torch.device) -> Tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def _timed_call(call: Callable[[], Any], device: torch.device, measure_memory: bool
                ) -> Tuple[Any, float, Optional[float]]:
    """``(result, seconds, peak MiB or None)`` of one call."""
    outcome: Dict[str, Tuple[Any, float]] = {}

    def timed() -> None:
        outcome["value"] = _timed(call, device)

    memory = peak_memory_mib(timed, device) if measure_memory else timed()
    result, seconds = outcome["value"]
    return result, seconds, memory


@dataclass
class _Record:
    """What one explainer of one model accumulates over the batches."""

    maps: List[np.ndarray] = field(default_factory=list)
    logits: List[torch.Tensor] = field(default_factory=list)
    classes: List[torch.Tensor] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0
    memory_mib: Optional[float] = None
    pointing: List[torch.Tensor] = field(default_factory=list)
    deletion: List[torch.Tensor] = field(default_factory=list)
    insertion: List[torch.Tensor] = field(default_factory=list)
    road: Dict[str, List[np.ndarray]] = field(default_factory=lambda: {"morf": [], "lerf": [], "combined": []})
    infidelity: List[np.ndarray] = field(default_factory=list)
    sensitivity: List[np.ndarray] = field(default_factory=list)
    randomization: List[torch.Tensor] = field(default_factory=list)
    random_logit: List[torch.Tensor] = field(default_factory=list)


def _mean(values: Sequence[Any]) -> Optional[float]:
    """Mean over every image of a list of per-batch arrays, NaN (undefined) values left out."""
    if not values:
        return None
    joined = np.concatenate([np.asarray(value, dtype=np.float64).reshape(-1) for value in values])
    defined = joined[~np.isnan(joined)]
    return float(defined.mean()) if len(defined) else None


def _undefined(values: Sequence[Any]) -> int:
    return int(sum(np.isnan(np.asarray(value, dtype=np.float64)).sum() for value in values))


def bench_model(model: nn.Module, label: str, data: BenchData, explainers: Optional[Sequence[str]] = None,
                settings: BenchSettings = BenchSettings(), device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Run the explainers of one model over the data and measure them.

    Args:
        model: a tscam-explain model or a timm ViT classifier (left as it was: explainers do not change it).
        label: the model's name in the report.
        data: the images and their annotations.
        explainers: names to run (default: :func:`default_explainers`); a name that does not apply to
            ``model`` raises ``ValueError``.
        settings: what to measure.
        device: where to run (default: the model's device).

    Returns:
        ``{"model": label, "forward": {...}, "rows": [one dict per explainer]}``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    applicable = list_explainers(model)
    names = [canonical_name(name) for name in (explainers if explainers is not None else default_explainers(model))]
    refused = [name for name in names if name not in applicable]
    if refused:
        raise ValueError(f"explainer(s) {refused} do not apply to {label} ({type(model).__name__}); "
                         f"it accepts {applicable}")
    box_metrics = [family for family in ("localization", "faithfulness") if family in settings.metrics]
    if box_metrics and not data.has_boxes:
        raise ValueError(f"the {' and '.join(box_metrics)} metrics need box annotations (GT-known Loc, MaxBoxAcc, "
                         f"the pointing game); {data.name} has masks only: choose among cost and sanity, "
                         "or give a dataset with boxes")
    config = input_config(backbone_of(model))
    size = tuple(config["input_size"][-2:])
    if size[0] != size[1]:
        raise ValueError(f"{label} takes {size[0]}x{size[1]} inputs; the WSOL readers resize images to squares")
    reader = (data.make_reader or data.make_mask_reader)("maxboxacc", size[0], config["mean"], config["std"])
    count = len(reader) if settings.limit is None else min(settings.limit, len(reader))
    loader = DataLoader(Subset(reader, range(count)), batch_size=settings.batch_size, shuffle=False,
                        collate_fn=wsol_collate)
    fix_malloc_threshold()
    was_training = model.training
    model = model.to(device).eval()
    methods = [_Method(group, model) for group in _plan(model, names)]
    sanity_methods: List[Optional[_Method]] = [None] * len(methods)
    if "sanity" in settings.metrics:
        randomized = randomized_copy(model, settings.seed)
        sanity_methods = [_Method(method.names, randomized) for method in methods]
    records = {name: _Record() for name in names}
    forward = {"seconds": 0.0, "images": 0, "peak_mib": None}
    # the bench's own calls of the model (plain forward, deletion / insertion, ROAD) get its dtype, as the
    # explainers do (a bf16 or fp16 model takes float32 images)
    with dtype_policy(model):
        try:
            bar = tqdm(total=count * len(methods), desc=f"bench {label}", unit="img", disable=not settings.progress)
            seen = 0
            for batch in loader:
                images, classes = batch["image"].to(device), batch["label"]
                if seen == 0 and "cost" in settings.metrics:  # the first call of each method also warms it up
                    _forward(model, images)
                    forward["peak_mib"] = peak_memory_mib(lambda: _forward(model, images), device)
                forward["seconds"] += _timed(lambda: _forward(model, images), device)[1]
                forward["images"] += len(images)
                for method, sanity_method in zip(methods, sanity_methods):
                    take = len(images) if not method.per_image else min(len(images), settings.expensive_images - seen)
                    if take <= 0:
                        continue
                    part, part_classes, part_boxes = images[:take], classes[:take], batch["boxes"][:take]
                    first = seen == 0 and "cost" in settings.metrics
                    if first and not method.per_image:  # a warm-up call that also measures the peak memory
                        memory = peak_memory_mib(lambda: method.explain(part, part_classes), device)
                        for name in method.names:
                            records[name].memory_mib = memory
                    # a per-image method's first call is timed and measured at once: it is too costly to repeat,
                    # and its one-time set-up is small beside it
                    (maps, logits), seconds, memory = _timed_call(lambda: method.explain(part, part_classes), device,
                                                                  measure_memory=first and method.per_image)
                    if memory is not None:
                        for name in method.names:
                            records[name].memory_mib = memory
                    for name in method.names:
                        record = records[name]
                        record.seconds += seconds
                        record.images += take
                        record.maps.append(maps[name])
                        record.logits.append(logits.detach().float().cpu())
                        record.classes.append(part_classes.clone())
                        if "faithfulness" in settings.metrics:
                            display = _display_maps(maps[name], size, device)
                            _faithfulness(name, record, model, part, display, part_classes, part_boxes, seen, count,
                                          settings)
                    if sanity_method is not None and seen < settings.sanity_images:
                        _sanity(records, method, sanity_method, part, part_classes, maps, size, device, seen, settings,
                                num_classes=logits.shape[1])
                    bar.update(take)
                seen += len(images)
            bar.close()
        finally:
            model.train(was_training)

    forward_per_image = forward["seconds"] / max(forward["images"], 1)
    rows = [_summarise(name, method.shared, records[name], forward_per_image, forward["peak_mib"], data, settings,
                       size[0], config["mean"], config["std"])
            for method in methods for name in method.names]
    return {"model": label, "model_class": type(model).__name__, "input_size": list(size), "images": count,
            "forward": {"seconds_per_image": forward_per_image, "peak_mib": forward["peak_mib"]}, "rows": rows,
            "overlay": _overlay(reader, records, rows, settings.overlay_images, size, config["mean"], config["std"])}


def _overlay(reader: WSOLDataset, records: Dict[str, _Record], rows: List[Dict[str, Any]], count: int,
             size: Tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> Dict[str, Any]:
    """The first images (RGB uint8), their GT boxes, and per explainer its maps and the box MaxBoxAcc
    draws at the explainer's best threshold for IoU 50 (what the overlay figure shows)."""
    count = min(count, len(reader), *(records[row["explainer"]].images for row in rows))
    items = [reader[index] for index in range(count)]
    mean_t, std_t = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    images = [((item["image"] * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
              for item in items]
    panels: Dict[str, Any] = {}
    for row in rows:
        raw = np.concatenate(records[row["explainer"]].maps)[:count]
        maps = _display_maps(raw, size, torch.device("cpu")).numpy()
        maxboxacc = row.get("localization", {}).get("maxboxacc", {}).get("MaxBoxAcc")
        threshold = maxboxacc["best_threshold"][50] if maxboxacc else None
        boxes = ([maxboxacc_box(maxboxacc_scoremap(cam, size), threshold) for cam in raw]
                 if threshold is not None else None)
        panels[row["explainer"]] = {"maps": maps, "boxes": boxes, "threshold": threshold}
    return {"images": images, "gt_boxes": [item["boxes"].numpy() for item in items], "explainers": panels}


def _forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def _faithfulness(name: str, record: _Record, model: nn.Module, images: torch.Tensor, maps: torch.Tensor,
                  classes: torch.Tensor, boxes: Sequence[torch.Tensor], seen: int, count: int,
                  settings: BenchSettings) -> None:
    """Pointing game on every image; deletion / insertion, ROAD and Captum's metrics on the first images only."""
    record.pointing.append(energy_pointing_game(maps.cpu(), boxes).numpy())
    limit = count if settings.faithfulness_images is None else settings.faithfulness_images
    take = min(len(images), limit - seen)
    if take > 0:
        curves = deletion_insertion(model, images[:take], maps[:take], classes[:take], steps=settings.deletion_steps,
                                    blur_sigma=settings.blur_sigma)
        record.deletion.append(curves.deletion_auc.cpu().numpy())
        record.insertion.append(curves.insertion_auc.cpu().numpy())
    take = min(len(images), settings.road_images - seen)
    if take > 0:
        scores = road_scores(model, images[:take], maps[:take], classes[:take],
                             morf_percentile=settings.road_morf_percentile,
                             lerf_percentile=settings.road_lerf_percentile,
                             combined_percentiles=settings.road_combined_percentiles, seed=settings.seed + seen)
        for key, value in scores.items():
            record.road[key].append(value)
    take = min(len(images), settings.captum_images - seen)
    if take > 0:
        scores = infidelity_and_sensitivity(model, name, images[:take], classes[:take].to(images.device),
                                            n_perturb_samples=settings.captum_perturbations, seed=settings.seed + seen,
                                            maps=maps[:take])
        record.infidelity.append(scores["infidelity"].float().cpu().numpy())
        record.sensitivity.append(scores["sensitivity_max"].float().cpu().numpy())


def _sanity(records: Dict[str, _Record], method: _Method, sanity_method: _Method, images: torch.Tensor,
            classes: torch.Tensor, maps: Dict[str, np.ndarray], size: Tuple[int, int], device: torch.device, seen: int,
            settings: BenchSettings, num_classes: int) -> None:
    """Rank correlation with the maps of the randomised model, and with another class's maps."""
    take = min(len(images), settings.sanity_images - seen)
    images, classes = images[:take], classes[:take]
    random_model_maps, _ = sanity_method.explain(images, classes)
    other_maps, _ = method.explain(images, other_classes(classes, num_classes, settings.seed + seen))
    for name in method.names:
        trained = _display_maps(maps[name][:take], size, device)
        records[name].randomization.append(
            spearman(trained, _display_maps(random_model_maps[name], size, device)).numpy())
        records[name].random_logit.append(spearman(trained, _display_maps(other_maps[name], size, device)).numpy())


def _localization(record: _Record, data: BenchData, settings: BenchSettings, input_size: int,
                  mean: Sequence[float], std: Sequence[float]) -> Dict[str, Any]:
    """The harness's metrics of the stored maps: the seeds' protocol, wsolevaluation's, PxAP."""
    maps = np.concatenate(record.maps)
    logits, classes = torch.cat(record.logits), torch.cat(record.classes)
    results: Dict[str, Any] = {}
    common = dict(batch_size=settings.batch_size, limit=len(maps), progress=False, device="cpu")
    if data.make_reader is not None:
        reader = data.make_reader("tscam", input_size, mean, std)
        threshold = settings.cam_threshold if settings.cam_threshold is not None else data.cam_threshold
        report = evaluate(StoredMaps(maps, logits, classes), reader, "tscam", cam_threshold=threshold, **common)
        results["tscam"] = report.metrics["localization"]
        results["tscam"]["cam_threshold"] = report.settings["cam_threshold"]
        reader = data.make_reader("maxboxacc", input_size, mean, std)
        report = evaluate(StoredMaps(maps, logits, classes), reader, "maxboxacc",
                          cam_curve_interval=settings.cam_curve_interval, **common)
        results["maxboxacc"] = report.metrics
    if data.make_mask_reader is not None:
        reader = data.make_mask_reader("maxboxacc", input_size, mean, std)
        report = evaluate(StoredMaps(maps, logits, classes), reader, "maxboxacc",
                          cam_curve_interval=settings.cam_curve_interval, **common)
        results["PxAP"] = report.metrics.get("PxAP")
    return results


def _summarise(name: str, shared: bool, record: _Record, forward_per_image: float, forward_mib: Optional[float],
               data: BenchData, settings: BenchSettings, input_size: int, mean: Sequence[float],
               std: Sequence[float]) -> Dict[str, Any]:
    row: Dict[str, Any] = {"explainer": name, "images": record.images}
    if "cost" in settings.metrics:
        per_image = record.seconds / max(record.images, 1)
        row["cost"] = {
            "seconds_per_image": per_image, "x_forward": per_image / forward_per_image if forward_per_image else None,
            "peak_mib": record.memory_mib,
            "x_forward_memory": (record.memory_mib / forward_mib
                                 if record.memory_mib is not None and forward_mib else None),
            "shared_pass": shared,
        }
    if "localization" in settings.metrics:
        row["localization"] = _localization(record, data, settings, input_size, mean, std)
    if "faithfulness" in settings.metrics:
        row["faithfulness"] = {
            "deletion_auc": _mean(record.deletion), "insertion_auc": _mean(record.insertion),
            "road_morf": _mean(record.road["morf"]), "road_lerf": _mean(record.road["lerf"]),
            "road_combined": _mean(record.road["combined"]), "pointing_game": _mean(record.pointing),
            "infidelity": _mean(record.infidelity), "sensitivity_max": _mean(record.sensitivity),
            "images": {"deletion_insertion": int(sum(len(v) for v in record.deletion)),
                       "road": int(sum(len(v) for v in record.road["morf"])),
                       "captum": int(sum(len(v) for v in record.infidelity)),
                       "pointing_game": int(sum(len(v) for v in record.pointing))},
        }
    if "sanity" in settings.metrics:
        row["sanity"] = {
            "randomization_spearman": _mean(record.randomization), "random_logit_spearman": _mean(record.random_logit),
            "images": int(sum(len(v) for v in record.randomization)),
            "undefined": {"randomization": _undefined(record.randomization),
                          "random_logit": _undefined(record.random_logit)},
        }
    return row
