"""Explainers side by side: ``bench(models, data)`` measures cost, localisation, faithfulness and sanity.

    from tscam_explain.bench import bench, synth_data
    report = bench(["tscam-synth", "vit-synth"], synth_data("out/data", images=300))
    report.save("out/bench")          # report.json, report.md, results.csv, figures
    print(report.table())

See ``docs/bench.md`` for every metric's definition and the figures.
"""
from __future__ import annotations

import datetime
import platform
import time
from dataclasses import asdict
from typing import Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..checkpoint import PathLike
from ..explainers import canonical_name, list_explainers
from ..pretrained import open_model
from ..wsol import package_versions
from .data import dataset_data, synth_data
from .faithfulness import deletion_insertion, energy_pointing_game, road_scores
from .report import BenchReport
from .runner import (BASELINES, METRIC_FAMILIES, BenchData, BenchSettings, StoredMaps, bench_model,
                     default_explainers)
from .sanity import randomized_copy, spearman

__all__ = ["bench", "BenchData", "BenchReport", "BenchSettings", "StoredMaps", "bench_model", "default_explainers",
           "synth_data", "dataset_data", "deletion_insertion", "energy_pointing_game", "road_scores",
           "randomized_copy", "spearman", "METRIC_FAMILIES", "BASELINES"]

ModelSpec = Union[str, PathLike, nn.Module]


def bench(models: Union[Sequence[ModelSpec], Mapping[str, ModelSpec]], data: BenchData, *,
          explainers: Union[None, Sequence[str], Mapping[str, Sequence[str]]] = None,
          settings: BenchSettings = BenchSettings(),
          device: Optional[Union[str, torch.device]] = None) -> BenchReport:
    """Put explainers side by side on each model and the same data.

    Args:
        models: shipped names (``tscam-synth``), model files, or models; a mapping gives them labels.
        data: from :func:`synth_data` (the generated benchmark) or :func:`dataset_data` (a dataset on disk).
        explainers: names to run on every model they apply to, or a mapping from a model's label to its
            own names (default: for each model, :func:`default_explainers`). A name that applies to none
            of the models is an error.
        settings: what to measure and on how many images.
        device: where to run (default: CUDA if available, else CPU).

    Returns:
        The :class:`BenchReport` (``report.save(folder)`` writes it with its figures).
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                             else "cpu")
    labelled = dict(models) if isinstance(models, Mapping) else {_label(spec): spec for spec in models}
    if not labelled:
        raise ValueError("bench needs at least one model")
    loaded: Dict[str, nn.Module] = {label: spec if isinstance(spec, nn.Module) else open_model(spec, device)
                                    for label, spec in labelled.items()}
    chosen: Dict[str, Optional[Sequence[str]]] = {}
    if isinstance(explainers, Mapping):
        unknown_models = sorted(set(explainers) - set(loaded))
        if unknown_models:
            raise ValueError(f"explainers are given for {unknown_models}, which are not among the models {list(loaded)}")
        chosen = {label: [canonical_name(name) for name in names] for label, names in explainers.items()}
    elif explainers is not None:
        wanted = [canonical_name(name) for name in explainers]
        for label, model in loaded.items():
            chosen[label] = [name for name in wanted if name in list_explainers(model)]
        unused = [name for name in wanted if not any(name in names for names in chosen.values())]
        if unused:
            known = list_explainers()
            unknown = [name for name in unused if name not in known]
            raise ValueError(f"unknown explainer(s) {unknown}; expected some of {known}" if unknown else
                             f"explainer(s) {unused} apply to none of the models {list(loaded)}")
    start = time.perf_counter()
    results = [bench_model(model, label, data, chosen.get(label), settings, device)
               for label, model in loaded.items() if chosen.get(label, None) != []]
    overlays = {result["model"]: result.pop("overlay") for result in results}
    environment = {"device": str(device), "threads": torch.get_num_threads(), "machine": platform.processor()
                   or platform.machine(), "date": datetime.date.today().isoformat(), **package_versions()}
    if device.type == "cuda":
        environment["gpu"] = torch.cuda.get_device_name(device)
    return BenchReport(results, _settings_dict(settings), data.name, environment, time.perf_counter() - start, overlays)


def _label(spec: ModelSpec) -> str:
    if isinstance(spec, nn.Module):
        return type(spec).__name__
    return str(spec)


def _settings_dict(settings: BenchSettings) -> Dict[str, object]:
    values = asdict(settings)
    values.pop("progress")
    return values
