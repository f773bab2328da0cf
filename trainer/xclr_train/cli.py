"""`xclr-train`: train an image encoder on xclr training shards, on a CPU, a GPU or under torchrun."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import Field, fields
from typing import get_type_hints

import click

from xclr_schemas import storage
from xclr_train.augment import RECIPES
from xclr_train.errors import TrainError
from xclr_train.models import CONVNET, TORCHVISION
from xclr_train.objectives import OBJECTIVES
from xclr_train.objectives.base import Objective, either, flag
from xclr_train.optim import FAMILY_RECIPES, PLAIN
from xclr_train.train import TrainConfig, train

# the objectives that project to the caption embedding's size instead of --proj-dim
CAPTION_SIZED = [n for n, c in OBJECTIVES.items() if c.projection_dim is not Objective.projection_dim]


def objective_options(command: Callable) -> Callable:
    """One option per field of the objectives' Args (`xclr_train.objectives.base`), the help and defaults theirs.
    Each defaults to None, "not given": the objective then uses its own default."""
    takers: dict[str, list[tuple[str, Field, type]]] = {}
    for name, cls in OBJECTIVES.items():
        types = get_type_hints(cls.Args)
        for f in fields(cls.Args):
            takers.setdefault(f.name, []).append((name, f, types[f.name]))
    for option_name, users in reversed(sorted(takers.items())):
        _, first, kind = users[0]
        for name, f, t in users:
            if t != kind or f.metadata["choices"] != first.metadata["choices"]:
                raise TypeError(f"{flag(option_name)}: {name} gives it another type or choices than {users[0][0]}")
        choices = first.metadata["choices"]
        command = click.option(flag(option_name), type=click.Choice(choices) if choices else kind, default=None,
                               help=_help([(name, f) for name, f, _ in users]))(command)
    return command


def _recipe_help(field: str) -> str:
    """Where an optimisation option's default comes from: each family's recipe, and the optimizers' plain values."""
    own = "; ".join(f"{family} backbones {getattr(r, field)}" for family, r in FAMILY_RECIPES.items())
    if field in ("lr", "weight_decay"):
        plain = ", ".join(f"{name} {getattr(r, field)}" for name, r in PLAIN.items())
        own += f"; with the other optimizer: {plain}"
    scaled = " x global batch / 256" if field == "lr" else ""
    return f"Default: the backbone family's recipe ({own}){scaled}."


def _help(users: list[tuple[str, Field]]) -> str:
    """The takers' shared help with their defaults, or each taker's own help and default."""
    helps = {f.metadata["help"] for _, f in users}
    if len(helps) > 1:
        return "; ".join(f"{name}: {f.metadata['help']} (default {f.default})" for name, f in users) + "."
    defaults = {f.default for _, f in users}
    default = str(users[0][1].default) if len(defaults) == 1 else ", ".join(f"{n} {f.default}" for n, f in users)
    return f"{helps.pop()} For --loss {either([n for n, _ in users])}; default {default}."


@click.command(context_settings={"show_default": True, "max_content_width": 120})
@click.option("--data", required=True,
              help="Shards: a directory (its sizes.json), a sizes.json or a brace pattern; local or a URL (s3://...).")
@click.option("--out", required=True,
              help="Run directory, local or a URL (written in a local work directory and uploaded after every "
                   "checkpoint).")
@click.option("--loss", type=click.Choice(list(OBJECTIVES)), default=TrainConfig.loss,
              help="The objective; its own options follow it (docs/train.md).")
@objective_options
@click.option("--arch", default=TrainConfig.arch,
              help=f"Backbone: {', '.join(TORCHVISION)} (torchvision), {CONVNET} (a small "
              "CPU CNN) or any timm model name (vit_small_patch16_224, convnext_tiny, timm:resnet50, ...); its family "
              "(batchnorm if it has BatchNorm layers, else layernorm) picks the optimisation defaults.")
@click.option("--image-size", type=int, default=TrainConfig.image_size, help="Crop size; torchvision's ResNets use the "
              "small-image stem up to 64 px; a timm model that takes img_size is built for it.")
@click.option("--patch-size", type=int, default=TrainConfig.patch_size,
              help="Patch size of a timm ViT (e.g. 4 for 32 px images). Default: the model's own.")
@click.option("--init", default=TrainConfig.init,
              help="Start from the backbone weights in this local file (.safetensors or a "
              "torch state dict, e.g. an xclr-export model.safetensors) instead of random ones.")
@click.option("--augment", type=click.Choice(list(RECIPES)), default=TrainConfig.augment,
              help="Training views: SimCLR's crop, flip, colour jitter, grayscale and blur, or crop and flip only "
              "(DataLoader workers cut the crops; the colour ops run batched on the training device).")
@click.option("--proj-hidden", type=int, default=TrainConfig.proj_hidden,
              help="Hidden width of the projection head; byol and nnclr size their predictor with it too.")
@click.option("--proj-dim", type=int, default=TrainConfig.proj_dim,
              help=f"Ignored by --loss {either(CAPTION_SIZED)} (the caption size).")
@click.option("--batch-size", type=int, default=TrainConfig.batch_size,
              help="Samples per rank per step (two views each).")
@click.option("--epochs", type=int, default=TrainConfig.epochs,
              help="Checkpoint intervals of --samples-per-epoch samples.")
@click.option("--steps", type=int, default=None, help="Total steps (instead of --epochs).")
@click.option("--samples-per-epoch", type=int, default=None, help="Default: the shards' sample count (sizes.json).")
@click.option("--optimizer", type=click.Choice(list(PLAIN)), default=TrainConfig.optimizer,
              help=_recipe_help("optimizer"))
@click.option("--lr", type=float, default=TrainConfig.lr,
              help="Peak learning rate. " + _recipe_help("lr"))
@click.option("--weight-decay", type=float, default=TrainConfig.weight_decay,
              help="Not on biases, norms, a ViT's position "
              "embedding and cls token. " + _recipe_help("weight_decay"))
@click.option("--clip-grad", type=float, default=TrainConfig.clip_grad,
              help="Largest global gradient norm, 0 for no clipping. " + _recipe_help("clip_grad"))
@click.option("--warmup-steps", type=int, default=None, help="Default: a tenth of the steps.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=TrainConfig.precision,
              help="auto: bf16 autocast on a GPU, fp32 on the CPU.")
@click.option("--workers", type=int, default=TrainConfig.workers, help="DataLoader worker processes per rank.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=TrainConfig.device)
@click.option("--seed", type=int, default=TrainConfig.seed)
@click.option("--resume", default=None,
              help="'latest' (RUN/checkpoints/latest.pt; a new run while there is none yet, so one command line "
                   "serves the first start and every torchrun restart) or a checkpoint path.")
@click.option("--save-every", type=int, default=TrainConfig.save_every,
              help="Keep epoch-NNNN.pt every this many epochs.")
@click.option("--log-every", type=int, default=TrainConfig.log_every, help="Steps per metrics line.")
@click.option("--progress/--no-progress", default=TrainConfig.progress)
def main(**options) -> None:
    """Train an image encoder with X-CLR (or a baseline) on shards written by `xclr-prep graph`.

    Multi-GPU / multi-node: launch with torchrun, e.g. `torchrun --nproc-per-node 8 -m xclr_train ...`.
    """
    for name in ("batch_size", "epochs", "steps", "samples_per_epoch", "image_size", "patch_size", "proj_hidden",
                 "proj_dim", "save_every", "log_every"):
        if options[name] is not None and options[name] < 1:
            raise click.BadParameter(f"must be at least 1, got {options[name]}",
                                     param_hint="--" + name.replace("_", "-"))
    general = {k: v for k, v in options.items() if k in {f.name for f in fields(TrainConfig)}}
    given = {k: v for k, v in options.items() if k not in general and v is not None}
    out, main_rank = options["out"], os.environ.get("RANK", "0") == "0"
    if options["resume"] not in (None, "latest"):
        options["resume"] = str(storage.fetch(options["resume"]))
    try:
        with storage.local_dir(out, publish=main_rank) as run:
            publish = (lambda: storage.push(run, out)) if storage.is_url(out) else None
            last = train(TrainConfig(**{**general, "out": str(run)}, loss_options=given), after_save=publish)
    except TrainError as exc:
        raise click.ClickException(str(exc)) from None
    if last:
        click.echo(f"done: step {last['step']}, loss {last['loss']:.4f}; run in {options['out']}")
