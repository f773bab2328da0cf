"""`xclr-export`: a run's trained backbone in forms that need neither xclr nor its checkpoint format.

    DIR/model.safetensors  the backbone's weights (no classifier, no projection head)
    DIR/config.json        library, architecture, image_size, mean/std, interpolation, feature_dim, and `training`:
                           the objective, data, step and every option of the run; for a timm backbone also timm's own
                           fields (model_args, pretrained_cfg), so that timm rebuilds it from the folder
    DIR/head.safetensors   with --head: the projection head, an nn.Sequential Linear-BN-ReLU-Linear (keys 0.*, 1.*, 3.*)
    DIR/model.onnx         with --onnx: the backbone, input "images" (N, 3, S, S) float32 normalised, output "features"
                           (N, feature_dim); checked with onnxruntime against torch before it is kept

Loading (`docs/train.md`, "Export"), with images resized on the shorter side to S, centre-cropped and normalised:

    timm         timm.create_model("local-dir:DIR", pretrained=True), or timm.create_model(architecture,
                 pretrained=True, pretrained_cfg_overlay=dict(file="DIR/model.safetensors"), **model_args)
    torchvision  m = torchvision.models.resnet50(); m.fc = torch.nn.Identity(); with model_args small_stem also
                 m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = nn.Identity(); then
                 m.load_state_dict(safetensors.torch.load_file("DIR/model.safetensors"))
    convnet      xclr's own small CNN: the ONNX file, or xclr_train.models

DIR is written as DIR.partial and renamed when whole: a DIR that exists is complete, and a rerun replaces it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import torch
from safetensors.torch import save_file
from torch import nn

from xclr_schemas.names import CHECKPOINTS, CONFIG, LATEST
from xclr_schemas.options import UserError
from xclr_train.augment import MEAN, STD
from xclr_train.checkpoint import read_checkpoint, read_encoder
from xclr_train.errors import TrainError, first_line
from xclr_train.models import SMALL_IMAGE_MAX, Encoder, library, timm_name

WEIGHTS, HEAD, ONNX = "model.safetensors", "head.safetensors", "model.onnx"
ONNX_TOLERANCE = 1e-4  # max |onnxruntime - torch| on the check batch, relative to the features' largest magnitude
PARTIAL = ".partial"


class ExportError(TrainError):
    """An export that cannot be made (the message is one line, for the user)."""


def checkpoint_of(run_or_checkpoint: Path) -> Path:
    """A checkpoint file as given, or RUN/checkpoints/latest.pt for a run directory."""
    return run_or_checkpoint / CHECKPOINTS / LATEST if run_or_checkpoint.is_dir() else run_or_checkpoint


def export(run_or_checkpoint: Path, out: Path, head: bool = False, onnx: bool = False) -> dict:
    """Write the export described above to `out`; returns its config.json."""
    path = checkpoint_of(run_or_checkpoint)
    state = read_checkpoint(path)
    encoder = read_encoder(path, state)
    config = export_config(encoder, state, path)
    partial = out.with_name(out.name + PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _write(encoder, config, partial, head, onnx)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return json.loads((out / CONFIG).read_text())


def _write(encoder: Encoder, config: dict, folder: Path, head: bool, onnx: bool) -> None:
    backbone = encoder.backbone
    if config["library"] == "timm":
        from timm.models import save_for_hf

        # pretrained_cfg: timm's defaults for the architecture, less what names other weights than these
        timm_fields = {**config, "pretrained_cfg": {"tag": "xclr", "license": None}}
        save_for_hf(backbone, str(folder), model_config=timm_fields, safe_serialization=True, data_config={
            "input_size": (3, config["image_size"], config["image_size"]), "mean": MEAN, "std": STD,
            "crop_pct": 1.0, "interpolation": config["interpolation"]})
    else:
        save_file(_contiguous(backbone.state_dict()), folder / WEIGHTS)
        (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if head:
        save_file(_contiguous(encoder.head.state_dict()), folder / HEAD)
    if onnx:
        write_onnx(backbone, config["image_size"], folder / ONNX)


def export_config(encoder: Encoder, state: dict, path: Path) -> dict:
    """config.json's own fields (see the module docstring)."""
    mc, options = encoder.config, state["config"]
    lib = library(mc.arch)
    model_args = {"small_stem": mc.image_size <= SMALL_IMAGE_MAX} if lib == "torchvision" else {}
    return {"library": lib, "architecture": timm_name(mc.arch) or mc.arch, "image_size": mc.image_size,
            "mean": list(MEAN), "std": list(STD), "interpolation": "bilinear", "feature_dim": encoder.feature_dim,
            **({"model_args": model_args} if model_args else {}),
            "training": {"objective": options["loss"], "data": options["data"], "step": state["step"],
                         "checkpoint": str(path), "options": options}}


def write_onnx(backbone: nn.Module, image_size: int, path: Path) -> None:
    """The backbone as ONNX with a dynamic batch size, kept only when onnxruntime's features on a random batch match
    torch's within ONNX_TOLERANCE."""
    import onnxruntime

    check = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(backbone, (check,), str(path), input_names=["images"], output_names=["features"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    except Exception as exc:  # the exporter raises many types for an operator it cannot express
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {first_line(exc)}") from None
    with torch.no_grad():
        expected = backbone(check).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": check.numpy()})[0]
    error = float(abs(got - expected).max() / max(abs(expected).max(), 1e-12))
    if error > ONNX_TOLERANCE:
        raise ExportError(f"onnxruntime's features differ from torch's by {error:.2e} (relative; at most "
                          f"{ONNX_TOLERANCE:g} is kept)")


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in state.items()}


@click.command(context_settings={"show_default": True, "max_content_width": 120})
@click.argument("run_or_checkpoint", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Export directory (replaced if present).")
@click.option("--head/--no-head", default=False, help="Also write the projection head (head.safetensors).")
@click.option("--onnx/--no-onnx", default=False, help="Also write the backbone as ONNX, checked with onnxruntime.")
def main(run_or_checkpoint: Path, out: Path, head: bool, onnx: bool) -> None:
    """Export the trained backbone of RUN_OR_CHECKPOINT (a run directory: its latest checkpoint) to OUT as
    safetensors + config.json, loadable with timm or torchvision alone (docs/train.md, "Export")."""
    try:
        config = export(run_or_checkpoint, out, head, onnx)
    except TrainError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"exported {config['library']} {config['architecture']} ({config['feature_dim']} features, "
               f"{config['image_size']} px, step {config['training']['step']}) to {out}: "
               + ", ".join(sorted(p.name for p in out.iterdir())))
