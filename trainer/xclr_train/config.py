"""The options of an `xclr-train` run (`TrainConfig`): each field's default, help, choices and valid range are
written once here; the command line is made from them (`xclr_train.cli`), and building a TrainConfig checks them,
the objective's options included, so a bad value is one line (TrainError) before anything is read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xclr_schemas.options import NON_NEGATIVE, Checked, Rule, at_least, option, required
from xclr_train.augment import RECIPES
from xclr_train.errors import TrainError
from xclr_train.models import CONVNET, SMALL_IMAGE_MAX, TORCHVISION
from xclr_train.objectives import OBJECTIVES, Objective, Options, parse_options
from xclr_train.objectives.base import either
from xclr_train.optim import PLAIN, default_help

# 0 keeps the weights (an export's evaluation run); a float32 update must be able to hold it (a larger one
# crashed inside the optimizer)
LEARNING_RATE = Rule(lambda v: 0 <= v <= 3.4e38, "must be 0 or more and at most 3.4e38 (float32's largest)")

# Options that do not change what is computed; a resume may change them.
FREE_OPTIONS = ("out", "resume", "workers", "device", "progress", "log_every", "save_every", "eval_data",
                "eval_queries", "eval_every", "grad_checkpointing", "rank_timeout")
# the objectives that project to the caption embedding's size instead of --proj-dim, and those with a predictor
CAPTION_SIZED = [n for n, c in OBJECTIVES.items() if c.projection_dim is not Objective.projection_dim]
WITH_PREDICTOR = [n for n, c in OBJECTIVES.items() if c.predictor]
AT_LEAST_ONE = at_least(1)


@dataclass(frozen=True)
class TrainConfig(Checked):
    """A run's options; `loss_options` are the objective's options given (the rest at their defaults)."""
    error = TrainError

    data: str = required("Shards: a directory (its sizes.json), a sizes.json or a brace pattern; local or a URL "
                         "(s3://...).")
    out: str = required("Run directory, local or a URL (written in a local work directory and uploaded after every "
                        "checkpoint).")
    loss: str = option("xclr", "The objective; its own options follow it (docs/train.md).", OBJECTIVES.keys())
    loss_options: Mapping[str, Any] = field(default_factory=dict)
    arch: str = option("resnet50", f"Backbone: {', '.join(TORCHVISION)} (torchvision), {CONVNET} (a small CPU CNN) "
                       "or any timm model name (vit_small_patch16_224, convnext_tiny, timm:resnet50, ...); its family "
                       "(batchnorm if it has BatchNorm layers, else layernorm) picks the optimisation defaults.")
    image_size: int = option(224, "Crop size of the training views; torchvision's ResNets use the small-image stem up "
                             f"to {SMALL_IMAGE_MAX} px; a timm model that takes img_size is built for it.",
                             rule=AT_LEAST_ONE)
    patch_size: int | None = option(None, "Patch size of a timm ViT (e.g. 4 for 32 px images). Default: the model's "
                                    "own.", rule=AT_LEAST_ONE)
    init: str | None = option(None, "Start a new run from the backbone weights in this local file (.safetensors or a "
                              "torch state dict, e.g. an xclr-export model.safetensors) instead of random ones; a "
                              "resumed run takes them from its checkpoint.")
    augment: str = option("simclr", "Training views: SimCLR's crop, flip, colour jitter, grayscale and blur, or crop "
                          "and flip only (DataLoader workers cut the crops; the colour ops run batched on the training "
                          "device).", tuple(RECIPES))
    proj_hidden: int = option(2048, "Hidden width of the projection head; --loss "
                              f"{either(WITH_PREDICTOR)} give their predictor the same width.", rule=AT_LEAST_ONE)
    proj_dim: int = option(128, f"Output size of the projection head; --loss {either(CAPTION_SIZED)} use the caption "
                           "embedding's size instead.", rule=AT_LEAST_ONE)
    batch_size: int = option(256, "Samples per rank per step (two views each).", rule=AT_LEAST_ONE)
    micro_batch: int | None = option(None, "Run each rank's batch through the network in chunks of this many samples "
                                     "(it must divide --batch-size): the loss still sees the whole global batch "
                                     "(GradCache's two passes), memory scales with the chunk. Default: no chunks.",
                                     rule=AT_LEAST_ONE)
    epochs: int = option(1, "Checkpoint intervals of --samples-per-epoch samples; ignored with --steps.",
                         rule=AT_LEAST_ONE)
    steps: int | None = option(None, "Total steps. Default: --epochs x the steps of an epoch.", rule=AT_LEAST_ONE)
    samples_per_epoch: int | None = option(None, "Samples per epoch, in whole global batches. Default: the shards' "
                                           "sample count (sizes.json).", rule=AT_LEAST_ONE)
    # None: the default of the backbone family's recipe (`xclr_train.optim`); `set_up` resolves these four
    optimizer: str | None = option(None, default_help("optimizer"), tuple(PLAIN))
    lr: float | None = option(None, "Peak learning rate. " + default_help("lr"), rule=LEARNING_RATE)
    weight_decay: float | None = option(None, "Weight decay, not on biases, norms, a ViT's position embedding and "
                                        "cls token. " + default_help("weight_decay"))
    clip_grad: float | None = option(None, "Largest global gradient norm, 0 for no clipping. "
                                     + default_help("clip_grad"))
    warmup_steps: int | None = option(None, "Steps of linear warm-up before the cosine decay. Default: a tenth of "
                                      "the steps (at least 1).")
    precision: str = option("auto", "auto: bf16 autocast on a GPU, fp32 on the CPU; bf16 and fp16 need a GPU, fp16 "
                            "adds a gradient scaler; the loss is computed in fp32.", ("auto", "fp32", "bf16", "fp16"))
    workers: int = option(4, "DataLoader worker processes per rank (0: load in the training process).",
                          rule=NON_NEGATIVE)
    device: str = option("auto", "auto: cuda when torch sees a GPU, else cpu; under torchrun each rank takes "
                         "cuda:LOCAL_RANK.", ("auto", "cpu", "cuda"))
    rank_timeout: int = option(1800, "Seconds a rank waits for the others (the rendezvous, any collective) before "
                               "the run stops with an error, so that torchrun --max-restarts restarts a group with a "
                               "hung rank from latest.pt; it must exceed the main rank's checkpoint write and upload, "
                               "which the others wait for (the in-run evaluation does not count).",
                               rule=AT_LEAST_ONE)
    seed: int = option(0, "Seeds the initial weights, the data stream (with the epoch, rank and worker), the "
                       "photometric draws (with the rank and step) and a queue's random start.")
    resume: str | None = option(None, "'latest' (RUN/checkpoints/latest.pt; a new run while there is none yet, so "
                                "one command line serves the first start and every torchrun restart) or a checkpoint "
                                "path.")
    save_every: int = option(1, "Keep epoch-NNNN.pt every this many epochs, and after the last.", rule=AT_LEAST_ONE)
    log_every: int = option(10, "Steps per metrics line (and one at the last step).", rule=AT_LEAST_ONE)
    progress: bool = option(True, "A progress bar on the main rank (the default), or none.")
    eval_data: str | None = option(None, "A labelled eval set (any spec xclr-eval reads): every --eval-every steps and "
                                   "at the end the main rank logs its kNN accuracy (eval/...) with the current "
                                   "backbone.")
    eval_queries: str | None = option(None, "Held-out queries for --eval-data, as xclr-eval --queries.")
    eval_every: int | None = option(None, "Steps between in-run evaluations of --eval-data. Default: at the end only.",
                                    rule=AT_LEAST_ONE)
    compile: bool = option(False, "torch.compile the backbone and projection head.")
    grad_checkpointing: bool = option(False, "Recompute the backbone's activations in the backward pass instead of "
                                      "keeping them (timm's set_grad_checkpointing; per stage for torchvision's "
                                      "ResNets): less memory, a second forward's time.")

    def check(self) -> None:
        self.objective_args()  # building them checks them
        if self.micro_batch is not None and self.batch_size % self.micro_batch:
            raise TrainError(f"--micro-batch {self.micro_batch} does not divide --batch-size {self.batch_size}")
        if (self.eval_every is not None or self.eval_queries is not None) and self.eval_data is None:
            raise TrainError(f"--{'eval-every' if self.eval_every is not None else 'eval-queries'} needs --eval-data")

    def objective_args(self) -> Options:
        """The objective's Args: `loss_options` over its defaults (`xclr_train.objectives.parse_options`)."""
        return parse_options(self.loss, self.loss_options)
