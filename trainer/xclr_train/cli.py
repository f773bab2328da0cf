"""`xclr-train`: train an image encoder on xclr training shards, on a CPU, a GPU or under torchrun."""

from __future__ import annotations

import os

import click

from xclr_schemas import storage
from xclr_train.augment import AUGMENTS
from xclr_train.checkpoint import CheckpointError
from xclr_train.data import DataError
from xclr_train.losses.triplet import MINING
from xclr_train.models import ARCHS
from xclr_train.objective import LOSSES, POSITIVES
from xclr_train.train import TrainConfig, train

D = TrainConfig


@click.command(context_settings={"show_default": True, "max_content_width": 120})
@click.option("--data", required=True,
              help="Shards: a directory (its sizes.json), a sizes.json or a brace pattern; local or a URL (s3://...).")
@click.option("--out", required=True,
              help="Run directory, local or a URL (written in a local work directory and uploaded after every "
                   "checkpoint).")
@click.option("--loss", type=click.Choice(LOSSES), default=D.loss)
@click.option("--targets", type=click.Choice(["sparse", "dense"]), default=D.targets,
              help="X-CLR targets: sparse from KEY.nbr.npy, dense from KEY.emb.npy (needs --with-embeddings shards).")
@click.option("--calibrate", type=click.Choice(["none", "background"]), default=D.calibrate,
              help="Map similarities to max(0, (S - b) / (1 - b)) with the graph's background similarity b.")
@click.option("--floor", type=click.Choice(["background", "none"]), default=D.floor,
              help="Sparse S for pairs outside the graph: the background similarity (clipped at the k-th neighbour "
                   "mean), or none, which gives them no target weight.")
@click.option("--positives", type=click.Choice(list(POSITIVES)), default=D.positives,
              help="supcon, triplet, npair, contrastive: positives share the caption id, the label (KEY.json "
                   "\"label\") or are graph neighbours (same caption or top-k either way; needs KEY.nbr.npy).")
@click.option("--margin", type=float, default=None,
              help="triplet, contrastive: margin on distances between unit vectors. Default: triplet 0.2, "
                   "contrastive 1.0.")
@click.option("--mining", type=click.Choice(list(MINING)), default=None,
              help="triplet: in-batch hardest positive and negative, or FaceNet's semi-hard negatives. Default: "
                   "hardest.")
@click.option("--queue-size", type=int, default=None,
              help="moco: negatives (default 65536); nnclr: support set (default 98304); xclr: past projections "
                   "with their caption ids and neighbour rows as further columns (default 0, none).")
@click.option("--momentum", type=float, default=None,
              help="moco, byol: base EMA of the target network, rising to 1 on a cosine. Default: moco 0.99, "
                   "byol 0.996.")
@click.option("--tau", type=float, default=D.tau, help="Temperature of the predicted distribution.")
@click.option("--tau-s", type=float, default=D.tau_s, help="Temperature of the X-CLR target distribution.")
@click.option("--arch", type=click.Choice(list(ARCHS)), default=D.arch)
@click.option("--image-size", type=int, default=D.image_size, help="Crop size; <= 64 uses the small-image stem.")
@click.option("--augment", type=click.Choice(list(AUGMENTS)), default=D.augment,
              help="Training views: SimCLR's crop, flip, colour jitter, grayscale and blur, or crop and flip only.")
@click.option("--proj-hidden", type=int, default=D.proj_hidden,
              help="Hidden width of the projection head; byol and nnclr size their predictor with it too.")
@click.option("--proj-dim", type=int, default=D.proj_dim, help="Ignored by --loss clip (the caption size).")
@click.option("--batch-size", type=int, default=D.batch_size, help="Samples per rank per step (two views each).")
@click.option("--epochs", type=int, default=D.epochs, help="Checkpoint intervals of --samples-per-epoch samples.")
@click.option("--steps", type=int, default=None, help="Total steps (instead of --epochs).")
@click.option("--samples-per-epoch", type=int, default=None, help="Default: the shards' sample count (sizes.json).")
@click.option("--optimizer", type=click.Choice(["lars", "adamw"]), default=D.optimizer)
@click.option("--lr", type=float, default=None, help="Peak learning rate. Default: LARS 0.3, AdamW 1e-3, x batch/256.")
@click.option("--weight-decay", type=float, default=D.weight_decay)
@click.option("--warmup-steps", type=int, default=None, help="Default: a tenth of the steps.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=D.precision,
              help="auto: bf16 autocast on a GPU, fp32 on the CPU.")
@click.option("--workers", type=int, default=D.workers, help="DataLoader worker processes per rank.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=D.device)
@click.option("--seed", type=int, default=D.seed)
@click.option("--resume", default=None,
              help="'latest' (RUN/checkpoints/latest.pt; a new run while there is none yet, so one command line "
                   "serves the first start and every torchrun restart) or a checkpoint path.")
@click.option("--save-every", type=int, default=D.save_every, help="Keep epoch-NNNN.pt every this many epochs.")
@click.option("--log-every", type=int, default=D.log_every, help="Steps per metrics line.")
@click.option("--progress/--no-progress", default=D.progress)
def main(**options) -> None:
    """Train an image encoder with X-CLR (or a baseline) on shards written by `xclr-prep graph`.

    Multi-GPU / multi-node: launch with torchrun, e.g. `torchrun --nproc-per-node 8 -m xclr_train ...`.
    """
    for name in ("batch_size", "epochs", "steps", "samples_per_epoch", "image_size", "save_every", "log_every"):
        if options[name] is not None and options[name] < 1:
            raise click.BadParameter(f"must be at least 1, got {options[name]}",
                                     param_hint="--" + name.replace("_", "-"))
    out, main_rank = options["out"], os.environ.get("RANK", "0") == "0"
    if options["resume"] not in (None, "latest"):
        options["resume"] = str(storage.fetch(options["resume"]))
    try:
        with storage.local_dir(out, publish=main_rank) as run:
            publish = (lambda: storage.push(run, out)) if storage.is_url(out) else None
            last = train(TrainConfig(**{**options, "out": str(run)}), after_save=publish)
    except (DataError, CheckpointError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if last:
        click.echo(f"done: step {last['step']}, loss {last['loss']:.4f}; run in {options['out']}")
