"""The authors' own checkpoints: official TS-CAM and TRT files as tscam-explain models.

What their training scripts save (vasgaowei/TS-CAM and su-hui-zz/ReAttentionTransformer,
``tools_cam/train_cam.py``; TRT's stage 2: ``tools_cam/train_cam_fusecamfz.py``) is
``{"epoch": …, "state_dict": …, "best_map": …}``, the state dict of a ``DataParallel`` model (every key
prefixed ``module.``). A bare state dict, with or without the prefix, is read too. Three models:

* TS-CAM (``deit_tscam_{tiny,small,base}_patch16_224``): a DeiT whose ``head`` is the 3×3 conv;
* TRT stage 1 (``deit_trt_base_patch16_{224,384}``): DeiT + ``score_layer`` (the re-attention block),
  ``score_norm``, ``score_head`` and a linear ``head``;
* TRT stage 2 (``deit_trt_fuse_base_patch16_{224,384}``): stage 1 + ``camfuse_block`` (the CAM branch).

Every key is renamed to ours (:data:`TSCAM_KEY_RULES`, :data:`TRT_KEY_RULES`) and loaded with
``strict=True``. The architecture is read from the tensor shapes, except the number of attention
heads, which no tensor holds: it is ``embed_dim // 64`` (DeiT's head width) unless given. TRT's token
selection parameter ``u`` is not stored either: it defaults to the official config of the inferred
benchmark (0.6 for 200 classes at 224², 0.65 at 384², 0.95 for 1000 classes; else the paper's 0.65).

A stage-1 file has no CAM branch. It is initialised as the official stage-2 script starts it: the CAM
block from block L, its norm from the final norm, the conv head with PyTorch's default init. The
official script copies block L and the norm of the ImageNet DeiT, which a stage-1 file does not hold;
its own block L and norm (fine-tuned from those) are the nearest available. The maps of such a
model are not TRT's (its CAM head is random), so loading one warns; the returned model's
``official.stage`` is 1 and ``official.cam_branch_trained`` is ``False``. Train the CAM branch with
``tscam-explain train --recipe trt-stage2 --stage1 FILE``.

Every loaded model carries ``model.official`` (:class:`OfficialCheckpoint`): what the file was, the
architecture and which values were inferred; :meth:`OfficialCheckpoint.describe` says it in words.
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn

from ..checkpoint import PathLike, load_file
from .registry import MODEL_FILE_FORMAT
from .trt import TRT, create_trt
from .tscam import TSCAM, create_tscam

logger = logging.getLogger(__name__)

#: DeiT's attention head width: tiny 192/3, small 384/6, base 768/12.
DEIT_HEAD_WIDTH = 64
#: ``u`` of TRT's official configs by (classes, input size): configs/CUB/*_0.6 and *_384_0.65, configs/ILSVRC/*_0.95.
OFFICIAL_TRT_U = {(200, 224): 0.6, (200, 384): 0.65, (1000, 224): 0.95}
#: The paper's u (CUB), for any other configuration.
PAPER_TRT_U = 0.65
_DEIT_SIZES = {192: "tiny", 384: "small", 768: "base"}

_BLOCK_PARAMETER = r"(?:norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(?:weight|bias)"
_BACKBONE_RULES = (
    (r"(cls_token|pos_embed|patch_embed\.proj\.(?:weight|bias)|norm\.(?:weight|bias))", r"backbone.\1"),
    (rf"(blocks\.\d+\.{_BLOCK_PARAMETER})", r"backbone.\1"),
)
#: Official TS-CAM key (regular expression) → our key.
TSCAM_KEY_RULES: Tuple[Tuple[str, str], ...] = _BACKBONE_RULES + (
    (r"head\.(weight|bias)", r"head.conv.\1"),
)
#: Official TRT / TRTFuse key (regular expression) → our key.
TRT_KEY_RULES: Tuple[Tuple[str, str], ...] = _BACKBONE_RULES + (
    (r"head\.(weight|bias)", r"head.\1"),
    (rf"score_layer\.({_BLOCK_PARAMETER})", r"reattention.block.\1"),
    (r"score_norm\.(weight|bias)", r"importance_norm.\1"),
    (r"score_head\.(weight|bias)", r"importance_head.\1"),
    (rf"camfuse_block\.cam_tr\.({_BLOCK_PARAMETER})", r"cam_block.\1"),
    (r"camfuse_block\.cam_norm\.(weight|bias)", r"cam_norm.\1"),
    (r"camfuse_block\.cam_head\.(weight|bias)", r"cam_head.conv.\1"),
)
_EXPECTED = (
    "official TS-CAM keys (cls_token, pos_embed, patch_embed.proj.*, blocks.N.{norm1,attn.qkv,attn.proj,norm2,"
    "mlp.fc1,mlp.fc2}.*, norm.*, head.* with head.weight a 3x3 conv (C, D, 3, 3)) or official TRT keys (the same "
    "backbone, a linear head.weight (C, D), score_layer.*, score_norm.*, score_head.*; stage 2 adds "
    "camfuse_block.cam_tr.*, camfuse_block.cam_norm.*, camfuse_block.cam_head.*), optionally prefixed 'module.' "
    "and wrapped as {'state_dict': ...}"
)
_SHOWN_KEYS = 12


@dataclass(frozen=True)
class OfficialCheckpoint:
    """What an official checkpoint was and how it was read (``model.official`` after loading).

    Attributes:
        path: the file.
        method: ``"tscam"`` or ``"trt"``.
        official_arch: the official model factory the keys and shapes correspond to.
        stage: TRT's training stage the file comes from (1: ``deit_trt_*``, 2: ``deit_trt_fuse_*``);
            ``None`` for TS-CAM.
        cam_branch_trained: ``False`` for a TRT stage-1 file, whose CAM branch was initialised here.
        architecture: embed_dim, depth, num_heads, num_classes, img_size, patch_size, mlp_ratio, in_chans
            (and ``u`` for TRT).
        inferred: how each architecture value was obtained (from which tensor, or by which convention).
        notes: anything else the user should know about this model.
    """

    path: str
    method: str
    official_arch: str
    stage: Optional[int]
    cam_branch_trained: bool
    architecture: Dict[str, Any]
    inferred: Tuple[str, ...]
    notes: Tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """A few lines saying what was loaded and what was inferred."""
        what = f"official {self.method.upper()} checkpoint ({self.official_arch}"
        what += f", stage {self.stage})" if self.stage is not None else ")"
        lines = [f"{self.path}: {what}", "inferred: " + "; ".join(self.inferred)]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def _state_dict_of(record: Any, source: str) -> Dict[str, torch.Tensor]:
    """The tensors of an official file: its ``state_dict`` entry or the bare dict, ``module.`` stripped."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{source} holds a {type(record).__name__}, not a checkpoint dict; expected {_EXPECTED}")
    # the official scripts save {"state_dict": ...}; DeiT's own releases and our trainer {"model": ...}
    state = record.get("state_dict", record.get("model", record))
    if MODEL_FILE_FORMAT in (record.get("format"), isinstance(state, Mapping) and state.get("format")):
        raise ValueError(f"{source} is a tscam-explain model file (format {MODEL_FILE_FORMAT!r}), not an official "
                         "checkpoint; load it with load_model")
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{source} has an empty or non-dict 'state_dict'; expected {_EXPECTED}")
    others = sorted(str(key) for key, value in state.items() if not isinstance(value, torch.Tensor))
    if others:
        raise ValueError(f"{source} is not a state dict: entries {_shown(others)} are not tensors "
                         f"(top-level keys: {_shown(sorted(map(str, record)))}); expected {_EXPECTED}")
    # DataParallel prefixes every key; the official loaders strip it the same way
    return {key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()}


def _shown(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return f"[{shown}{', …' if len(keys) > _SHOWN_KEYS else ''}] ({len(keys)} in all)"


def map_official_keys(state: Mapping[str, torch.Tensor], rules: Sequence[Tuple[str, str]]
                      ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename official keys to ours by the first rule whose pattern matches the whole key.

    Args:
        state: official state dict (``module.`` already stripped).
        rules: ``(pattern, template)`` pairs, e.g. :data:`TSCAM_KEY_RULES`.

    Returns:
        ``(renamed state dict, keys no rule matched)``.
    """
    compiled = [(re.compile(pattern), template) for pattern, template in rules]
    mapped, unmapped = {}, []
    for key, value in state.items():
        for pattern, template in compiled:
            match = pattern.fullmatch(key)
            if match:
                mapped[match.expand(template)] = value
                break
        else:
            unmapped.append(key)
    return mapped, unmapped


def _kind_of(state: Mapping[str, torch.Tensor], source: str) -> Tuple[str, Optional[int]]:
    """``("tscam", None)``, ``("trt", 1)`` or ``("trt", 2)``; a clear error for anything else."""
    if any(key.startswith("score_layer.") for key in state):
        return "trt", 2 if any(key.startswith("camfuse_block.") for key in state) else 1
    head = state.get("head.weight")
    if isinstance(head, torch.Tensor) and head.dim() == 4:
        return "tscam", None
    known = [key for key in state if any(re.fullmatch(pattern, key) for pattern, _ in TRT_KEY_RULES)]
    unmapped = sorted(set(state) - set(known))
    if isinstance(head, torch.Tensor) and head.dim() == 2 and "pos_embed" in state:
        reason = (f"it looks like a ViT classifier (a linear head.weight {tuple(head.shape)}, no score_layer.*): "
                  "not TS-CAM, whose head is a 3x3 conv, nor TRT; load it with timm instead")
        unmapped = sorted(set(unmapped) | {key for key in state if key.startswith("head.")})
    elif not known:
        reason = "none of its keys is a DeiT / TS-CAM / TRT key (another method's checkpoint?)"
    else:
        reason = "it has no TS-CAM conv head (head.weight of shape (C, D, 3, 3)) and no TRT score_layer.*"
    raise ValueError(f"{source} is not an official TS-CAM or TRT checkpoint: {reason}. Keys that did not map: "
                     f"{_shown(unmapped)}. Expected {_EXPECTED}")


def _shape(state: Mapping[str, torch.Tensor], key: str, source: str, dims: int) -> Tuple[int, ...]:
    if key not in state:
        raise ValueError(f"{source} has no {key!r}; expected {_EXPECTED}")
    shape = tuple(state[key].shape)
    if len(shape) != dims:
        raise ValueError(f"{source}: {key} has shape {shape}; expected a {dims}-D tensor")
    return shape


def infer_architecture(state: Mapping[str, torch.Tensor], method: str, source: str = "checkpoint",
                       num_heads: Optional[int] = None) -> Tuple[Dict[str, Any], List[str]]:
    """The DeiT configuration of an official state dict, from its tensor shapes.

    Args:
        state: official state dict (``module.`` stripped).
        method: ``"tscam"`` or ``"trt"``.
        source: the file, for error messages.
        num_heads: attention heads; default ``embed_dim // 64`` (no tensor holds it).

    Returns:
        ``(architecture, how each value was inferred)``.
    """
    _, tokens, dim = _shape(state, "pos_embed", source, 3)
    out_dim, in_chans, patch_h, patch_w = _shape(state, "patch_embed.proj.weight", source, 4)
    grid = math.isqrt(tokens - 1)
    if out_dim != dim or patch_h != patch_w or grid * grid != tokens - 1:
        raise ValueError(f"{source}: pos_embed {tuple(state['pos_embed'].shape)} and patch_embed.proj.weight "
                         f"{tuple(state['patch_embed.proj.weight'].shape)} do not describe a square DeiT with one "
                         "class token and square patches")
    indices = sorted({int(match.group(1)) for key in state for match in [re.match(r"blocks\.(\d+)\.", key)] if match})
    if not indices or indices != list(range(len(indices))):
        raise ValueError(f"{source}: transformer blocks {indices} are not numbered 0 … L-1")
    hidden, _ = _shape(state, "blocks.0.mlp.fc1.weight", source, 2)
    head_key = "head.weight"
    classes = _shape(state, head_key, source, 4 if method == "tscam" else 2)[0]
    heads_note = "given"
    if num_heads is None:
        if dim % DEIT_HEAD_WIDTH:
            raise ValueError(f"{source}: embed_dim {dim} is not a multiple of DeiT's head width {DEIT_HEAD_WIDTH}; "
                             "pass num_heads (the file does not store it)")
        num_heads = dim // DEIT_HEAD_WIDTH
        heads_note = f"not stored in the file: embed_dim / {DEIT_HEAD_WIDTH} (DeiT's head width)"
    architecture = dict(embed_dim=dim, depth=len(indices), num_heads=num_heads, num_classes=classes,
                        img_size=grid * patch_h, patch_size=patch_h, mlp_ratio=hidden / dim, in_chans=in_chans,
                        qkv_bias="blocks.0.attn.qkv.bias" in state)
    inferred = [f"embed_dim {dim} from pos_embed", f"depth {len(indices)} from blocks.N",
                f"num_heads {num_heads} ({heads_note})", f"num_classes {classes} from {head_key}",
                f"patch_size {patch_h} from patch_embed.proj.weight",
                f"img_size {grid * patch_h} from pos_embed's {tokens - 1} patch tokens ({grid}x{grid})",
                f"mlp_ratio {hidden / dim:g} from blocks.0.mlp.fc1.weight"]
    return architecture, inferred


def _timm_name(architecture: Mapping[str, Any]) -> str:
    """The DeiT whose name matches, else a DeiT whose defaults the explicit arguments override.

    A DeiT name keeps timm's pretrained config for the data (ImageNet's mean and std, as the official code).
    """
    size = _DEIT_SIZES.get(architecture["embed_dim"])
    name = f"deit_{size}_patch{architecture['patch_size']}_{architecture['img_size']}"
    return name if size is not None and timm.is_model(name) else "deit_tiny_patch16_224"


def _official_name(method: str, stage: Optional[int], architecture: Mapping[str, Any]) -> str:
    """The official factory name of these shapes, e.g. ``deit_trt_fuse_base_patch16_224``
    (``custom`` for a width no DeiT has)."""
    kind = "tscam" if method == "tscam" else ("trt_fuse" if stage == 2 else "trt")
    size = _DEIT_SIZES.get(architecture["embed_dim"], "custom")
    return f"deit_{kind}_{size}_patch{architecture['patch_size']}_{architecture['img_size']}"


def _official_u(architecture: Mapping[str, Any]) -> Tuple[float, str]:
    key = (architecture["num_classes"], architecture["img_size"])
    if key in OFFICIAL_TRT_U:
        return OFFICIAL_TRT_U[key], f"the official config for {key[0]} classes at {key[1]}x{key[1]}"
    return PAPER_TRT_U, "not stored in the file and no official config matches: the paper's CUB value"


def model_from_official(record: Any, source: str = "checkpoint", *, num_heads: Optional[int] = None,
                        u: Optional[float] = None) -> nn.Module:
    """Build a :class:`~tscam_explain.models.TSCAM` or :class:`~tscam_explain.models.TRT` from an
    official checkpoint's contents (what ``torch.load`` returned); see :func:`load_official`."""
    state = _state_dict_of(record, source)
    method, stage = _kind_of(state, source)
    architecture, inferred = infer_architecture(state, method, source, num_heads)
    rules = TSCAM_KEY_RULES if method == "tscam" else TRT_KEY_RULES
    mapped, unmapped = map_official_keys(state, rules)
    if unmapped:
        raise ValueError(f"{source} looks like an official {method.upper()} checkpoint, but keys did not map: "
                         f"{_shown(sorted(unmapped))}. Expected {_EXPECTED}")
    kwargs = {name: architecture[name] for name in ("img_size", "patch_size", "embed_dim", "depth", "num_heads",
                                                    "mlp_ratio", "in_chans", "qkv_bias")}
    name = _timm_name(architecture)
    notes: List[str] = []
    if method == "tscam":
        model: nn.Module = create_tscam(name, architecture["num_classes"], **kwargs)
    else:
        if u is None:
            u, how = _official_u(architecture)
            inferred.append(f"u {u} ({how})")
        else:
            inferred.append(f"u {u} (given)")
        architecture["u"] = u
        model = create_trt(name, architecture["num_classes"], u=u, **kwargs)
        if stage == 1:
            mapped.update(_stage1_cam_branch(model, mapped, architecture["depth"]))
            notes.append("TRT stage-1 file: the CAM branch is untrained (CAM block from block L, its norm from the "
                         "final norm, a randomly initialised conv head, as the official stage-2 script starts it); "
                         "its maps are not TRT's until stage 2 is trained: tscam-explain train --recipe trt-stage2 "
                         f"--stage1 {source}")
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{source}: the official weights do not fit the inferred architecture {architecture}: "
                         f"{error}") from None
    model.official = OfficialCheckpoint(source, method, _official_name(method, stage, architecture), stage,
                                        stage != 1, architecture, tuple(inferred), tuple(notes))
    logger.info(model.official.describe())
    if stage == 1:
        warnings.warn(notes[0], UserWarning, stacklevel=3)
    return model.eval()


def _stage1_cam_branch(model: TRT, mapped: Mapping[str, torch.Tensor], depth: int) -> Dict[str, torch.Tensor]:
    """The CAM-branch entries a stage-1 file lacks: block L and the final norm, the model's own conv init."""
    entries = {}
    for key, value in model.state_dict().items():
        if key.startswith("cam_block."):
            entries[key] = mapped[f"backbone.blocks.{depth - 1}.{key[len('cam_block.'):]}"]
        elif key.startswith("cam_norm."):
            entries[key] = mapped[f"backbone.norm.{key[len('cam_norm.'):]}"]
        elif key.startswith("cam_head."):
            entries[key] = value
    return entries


def load_official(path: PathLike, *, num_heads: Optional[int] = None, u: Optional[float] = None,
                  map_location: Union[str, torch.device] = "cpu") -> Union[TSCAM, TRT]:
    """Load an official TS-CAM or TRT checkpoint (with ``weights_only=True``) as our model, in eval mode.

    Args:
        path: a file written by the authors' training scripts, or a bare state dict of the same keys.
        num_heads: attention heads (no tensor stores them); default ``embed_dim // 64``, DeiT's.
        u: TRT's token-selection parameter (not stored); default: the official config's value for the
            inferred benchmark (0.6 CUB-224, 0.65 CUB-384, 0.95 ILSVRC), else the paper's 0.65.
        map_location: where the tensors are loaded.

    Returns:
        a :class:`TSCAM` or :class:`TRT` with ``model.official`` (:class:`OfficialCheckpoint`) saying what
        was loaded and inferred. A TRT stage-1 file warns: its CAM branch is untrained.

    Raises:
        ValueError: the file is not an official TS-CAM or TRT checkpoint (a plain ViT state dict, our own
            model file, a truncated file, another method's weights): the message names the file, the
            keys that did not map and what was expected.
    """
    return model_from_official(load_file(path, map_location=map_location), str(Path(path)), num_heads=num_heads,
                               u=u)
