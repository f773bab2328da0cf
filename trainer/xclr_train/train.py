"""The training loop of `xclr-train` (one process per rank under torchrun, or a single process).

Run directory::

    RUN/config.json              the options of the run (what a resume must match)
    RUN/metrics.jsonl            rank 0, every --log-every steps: loss, lr, samples/s, data vs step time, target
                                 statistics (see `xclr_train.objective`), skipped samples by reason
    RUN/checkpoints/latest.pt    after every epoch; epoch-NNNN.pt every --save-every epochs (`xclr_train.checkpoint`)

An epoch is a checkpoint interval of ``samples_per_epoch // (batch_size * world_size)`` steps over resampled shards
(`xclr_train.data`). `latest.pt` is written only at epoch ends, and each epoch's data stream is seeded by
(seed, epoch, rank, worker), so a run killed at any moment and resumed with ``--resume latest`` repeats the
interrupted epoch exactly and ends as an uninterrupted run would (bit for bit on CPU).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from xclr_schemas import load_npy
from xclr_schemas.names import CHECKPOINTS, CONFIG, LATEST
from xclr_schemas.shards import EMBEDDING_SUFFIX, META_SUFFIX, NEIGHBORS_SUFFIX
from xclr_train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xclr_train.data import REASONS, DataError, Needs, ShardStream, find_shards, first_sample, make_loader
from xclr_train.distributed import Dist, all_reduce_sum, init_distributed
from xclr_train.frameworks import Method
from xclr_train.losses.triplet import MINING
from xclr_train.metrics import MetricsLog
from xclr_train.models import Encoder, model_config
from xclr_train.objective import MARGINS, MOMENTUM, POSITIVE_LOSSES, POSITIVES, QUEUE_SIZE, LossSpec, objective
from xclr_train.optim import lr_at, make_optimizer

# Options that do not change what is computed; a resume may change them.
FREE_OPTIONS = ("out", "resume", "workers", "device", "progress", "log_every", "save_every")


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    loss: str = "xclr"
    targets: str = "sparse"
    calibrate: str = "none"
    floor: str = "background"
    positives: str = "caption"
    margin: float | None = None
    mining: str | None = None
    queue_size: int | None = None
    momentum: float | None = None
    tau: float = 0.1
    tau_s: float = 0.1
    arch: str = "resnet50"
    image_size: int = 224
    augment: str = "simclr"
    proj_hidden: int = 2048
    proj_dim: int = 128
    batch_size: int = 256
    epochs: int = 1
    steps: int | None = None
    samples_per_epoch: int | None = None
    optimizer: str = "lars"
    lr: float | None = None
    weight_decay: float = 1e-6
    warmup_steps: int | None = None
    precision: str = "auto"
    workers: int = 4
    device: str = "auto"
    seed: int = 0
    resume: str | None = None
    save_every: int = 1
    log_every: int = 10
    progress: bool = True


def default_lr(optimizer: str, global_batch: int) -> float:
    """LARS: 0.3 x batch / 256 (SimCLR); AdamW: 1e-3 x batch / 256."""
    return (0.3 if optimizer == "lars" else 1e-3) * global_batch / 256


def train(cfg: TrainConfig, after_save: Callable[[], None] | None = None) -> dict:
    """Train; returns the last logged metrics. Raises DataError / CheckpointError / ValueError on bad input.

    `after_save` is called on the main rank after every checkpoint (the command line publishes a URL run there).
    """
    dist = init_distributed(cfg.device)
    run = Path(cfg.out)
    shards = find_shards(cfg.data)
    spec, k, emb_dim = _loss_spec(cfg, shards)
    samples_per_epoch = cfg.samples_per_epoch or shards.samples
    if samples_per_epoch is None:
        raise DataError(f"{cfg.data} has no sizes.json covering its shards: give --samples-per-epoch")
    global_batch = cfg.batch_size * dist.world_size
    steps_per_epoch = samples_per_epoch // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"--samples-per-epoch {samples_per_epoch} is less than one global batch ({global_batch})")
    total = cfg.steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, total // 10)
    peak_lr = cfg.lr if cfg.lr is not None else default_lr(cfg.optimizer, global_batch)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if dist.device.type == "cuda" else "fp32")
    if precision != "fp32" and dist.device.type != "cuda":
        raise ValueError(f"--precision {precision} needs a GPU; use fp32 on the CPU")

    torch.manual_seed(cfg.seed)
    mconf = model_config(cfg.arch, cfg.image_size, cfg.proj_hidden, emb_dim if cfg.loss == "clip" else cfg.proj_dim)
    method = Method(spec, Encoder(**mconf), mconf["proj_dim"], cfg.proj_hidden, k, cfg.seed, dist.device,
                    dist.world_size)
    model = method.learner.encoder
    optimizer = make_optimizer(cfg.optimizer, method.learner, peak_lr, cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    start_epoch, step, skipped_before = _start(cfg, run, dist, mconf, method, optimizer, scaler)
    ddp = DistributedDataParallel(method.learner, device_ids=[dist.local_rank] if dist.device.type == "cuda" else
                                  None) if dist.world_size > 1 else method.learner

    stream = ShardStream(shards, cfg.batch_size, cfg.image_size, cfg.augment,
                         Needs(spec.needs_neighbors, spec.needs_embeddings, spec.needs_labels), k, cfg.seed, dist.rank)
    loader = make_loader(stream, cfg.workers, pin_memory=dist.device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16) \
        if precision != "fp32" else nullcontext()
    log = MetricsLog(run, step) if dist.is_main else None
    bar = tqdm(total=total, initial=step, unit="step", disable=not (dist.is_main and cfg.progress), dynamic_ncols=True)
    last: dict = {}
    try:
        for epoch in range(start_epoch, epochs):
            stream.epoch = epoch
            batches = iter(loader)
            skipped: dict[int, torch.Tensor] = {}  # DataLoader worker -> its running counts in this epoch
            window = _Window(dist.device)
            for _ in range(min(steps_per_epoch, total - step)):
                t0 = time.perf_counter()
                batch = next(batches)
                window.data_time += time.perf_counter() - t0
                skipped[int(batch.pop("worker"))] = batch.pop("skipped")
                batch = {key: value.to(dist.device, non_blocking=True) for key, value in batch.items()}
                lr = lr_at(step, total, warmup, peak_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = torch.cat([batch.pop("view1"), batch.pop("view2")])
                if dist.device.type == "cuda":
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast:
                    views = method.views(ddp, images)
                loss, stats = objective(spec, views, batch, dist.rank, method.queue_entries())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                method.after_step(views, batch, step, total)
                window.add(loss, stats)
                bar.update(1)
                if step % cfg.log_every == 0 or step == total:
                    last = window.summary(step, epoch, lr, global_batch, skipped_before, _total(skipped))
                    if log is not None:
                        log.write(last)
                        bar.set_postfix(loss=f"{last['loss']:.4f}")
                    window = _Window(dist.device)
            del batches
            skipped_before = skipped_before + all_reduce_sum(_total(skipped).to(dist.device)).cpu()
            if dist.is_main:
                state = {"model": model.state_dict(), "model_config": mconf, "method": method.state_dict(),
                         "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "epoch": epoch + 1, "step": step,
                         "skipped": skipped_before, "config": _options(cfg, dist.world_size)}
                _save(run / CHECKPOINTS, state, cfg.save_every, epochs)
                if after_save is not None:
                    after_save()
            if step >= total:
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
        if dist.world_size > 1:
            torch.distributed.destroy_process_group()
    return last


def _loss_spec(cfg: TrainConfig, shards) -> tuple[LossSpec, int | None, int | None]:
    """The loss, checked against the first sample's members; k and the caption embedding size when present."""
    sample = first_sample(shards)
    graph = (shards.manifest or {}).get("graph", {})
    background = graph.get("background_similarity", {}).get("mean")
    # The floor stands for "not among the top k": the background similarity, clipped at the mean k-th neighbour
    # similarity if it is not already well below it (docs/design.md, Targets and loss); --floor none: no target weight.
    floor = min(background, graph.get("kth_similarity_mean", background)) if background is not None else 0.0
    if cfg.floor == "none":
        floor = float("-inf")
    name = cfg.loss
    for option, choices in (("targets", ("sparse", "dense")), ("calibrate", ("none", "background")),
                            ("floor", ("background", "none")),
                            ("positives", POSITIVES), ("mining", (None, *MINING))):
        if getattr(cfg, option) not in choices:
            raise ValueError(f"--{option} must be one of {', '.join(c for c in choices if c)}, got "
                             f"{getattr(cfg, option)!r}")
    for option, takers in (("margin", MARGINS), ("mining", ("triplet",)), ("queue_size", (*QUEUE_SIZE, "xclr")),
                           ("momentum", MOMENTUM)):
        if getattr(cfg, option) is not None and name not in takers:
            raise ValueError(f"--{option.replace('_', '-')} is for --loss {_either(takers)}, not {name}")
    if cfg.floor == "none" and (name != "xclr" or cfg.targets != "sparse" or cfg.calibrate != "none"):
        raise ValueError("--floor none is for --loss xclr with sparse targets and no --calibrate (calibration "
                         "would lift the pairs outside the graph back to 0)")
    if cfg.positives != "caption" and name not in POSITIVE_LOSSES:
        raise ValueError(f"--positives is for --loss {_either(POSITIVE_LOSSES)}, not {name}")
    spec = LossSpec(name, cfg.tau, cfg.tau_s, cfg.targets, floor, background or 0.0, cfg.calibrate, cfg.positives,
                    cfg.margin if cfg.margin is not None else MARGINS.get(name, 0.0), cfg.mining or "hardest",
                    cfg.queue_size if cfg.queue_size is not None else QUEUE_SIZE.get(name, 0),
                    cfg.momentum if cfg.momentum is not None else MOMENTUM.get(name, 0.0))
    if spec.needs_neighbors and NEIGHBORS_SUFFIX not in sample:
        what = "--loss xclr with sparse targets" if name == "xclr" else "--positives graph"
        raise DataError(f"{what} needs KEY.{NEIGHBORS_SUFFIX} in every sample; "
                        f"{shards.urls[0]} has none (write the shards with xclr-prep graph)")
    if spec.needs_embeddings and EMBEDDING_SUFFIX not in sample:
        what = "--loss clip" if name == "clip" else "--targets dense"
        raise DataError(f"{what} needs KEY.{EMBEDDING_SUFFIX} (caption embeddings) in every sample; "
                        f"{shards.urls[0]} has none (write the shards with xclr-prep graph --with-embeddings)")
    if spec.needs_labels and "label" not in json.loads(sample.get(META_SUFFIX, b"{}")):
        raise DataError(f"--positives label needs a \"label\" in every KEY.{META_SUFFIX}; {shards.urls[0]} has "
                        f"none (embed with --label-col)")
    if name == "xclr" and background is None:
        raise DataError(f"--loss xclr needs the shards manifest (the graph's background similarity) beside the "
                        f"tars; {cfg.data} has none")
    if spec.queue_size < 0 or (name in QUEUE_SIZE and spec.queue_size == 0):
        raise ValueError(f"--queue-size must be positive for --loss {name}, got {spec.queue_size}")
    if spec.name == "xclr" and spec.queue_size and spec.targets != "sparse":
        raise ValueError("--queue-size with --loss xclr needs sparse targets (the queue keeps neighbour rows)")
    k = len(load_npy(sample[NEIGHBORS_SUFFIX])) if spec.needs_neighbors else None
    emb_dim = len(load_npy(sample[EMBEDDING_SUFFIX])) if EMBEDDING_SUFFIX in sample else None
    return spec, k, emb_dim


def _either(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _options(cfg: TrainConfig, world_size: int) -> dict:
    """The options that define what a run computes (a resume must repeat them)."""
    options = {k: v for k, v in asdict(cfg).items() if k not in FREE_OPTIONS}
    options["world_size"] = world_size
    return options


def _start(cfg: TrainConfig, run: Path, dist: Dist, mconf: dict, method: Method, optimizer,
           scaler) -> tuple[int, int, torch.Tensor]:
    """(epoch, step, skipped counts of all ranks) to start from: a new run, or the checkpoint named by --resume.

    ``--resume latest`` with no latest.pt yet starts a new run (as open_clip does), so one command line serves the
    first start and every restart (torchrun --max-restarts).
    """
    options = _options(cfg, dist.world_size)
    config_file = run / CONFIG
    latest = run / CHECKPOINTS / LATEST
    if cfg.resume is None or (cfg.resume == "latest" and not latest.exists()):
        if cfg.resume is None and latest.exists():
            raise CheckpointError(f"{run} already holds a run: resume it with --resume latest or choose another --out")
        if dist.is_main:
            run.mkdir(parents=True, exist_ok=True)
            config_file.write_text(json.dumps(options, indent=2, sort_keys=True) + "\n")
        return 0, 0, torch.zeros(len(REASONS), dtype=torch.long)
    path = latest if cfg.resume == "latest" else Path(cfg.resume)
    state = load_checkpoint(path, mconf)
    theirs = state["config"]
    changed = sorted(k for k in set(options) | set(theirs) if options.get(k) != theirs.get(k))
    if changed:
        raise CheckpointError(f"{path} was trained with other options: "
                              + ", ".join(f"{k}={theirs.get(k)!r} (now {options.get(k)!r})" for k in changed))
    method.learner.encoder.load_state_dict(state["model"])
    method.load_state_dict(state.get("method", {}))  # checkpoints from before issue 7 have none
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return state["epoch"], state["step"], state["skipped"]


def _save(folder: Path, state: dict, save_every: int, epochs: int) -> None:
    """epoch-NNNN.pt every `save_every` epochs and at the end, then latest.pt (so latest is never behind)."""
    if state["epoch"] % save_every == 0 or state["epoch"] == epochs:
        save_checkpoint(folder / f"epoch-{state['epoch']:04d}.pt", state)
    save_checkpoint(folder / LATEST, state)


def _total(skipped: dict[int, torch.Tensor]) -> torch.Tensor:
    return sum(skipped.values(), torch.zeros(len(REASONS), dtype=torch.long))


class _Window:
    """Sums over the steps since the last log line."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.steps, self.data_time, self.t0 = device, 0, 0.0, time.perf_counter()
        self.sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))

    def add(self, loss: torch.Tensor, stats: dict[str, torch.Tensor]) -> None:
        self.steps += 1
        self.sums["loss"] += loss.detach()
        for name, value in stats.items():
            self.sums[name] += value

    def summary(self, step: int, epoch: int, lr: float, global_batch: int, skipped_before: torch.Tensor,
                skipped_now: torch.Tensor) -> dict:
        """Means over the window's steps and ranks; skipped = all ranks' earlier epochs + this epoch's, summed."""
        names = sorted(self.sums)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        means = all_reduce_sum(torch.stack([self.sums[n] for n in names]).float()) / (world * self.steps)
        skipped = (skipped_before + all_reduce_sum(skipped_now.to(self.device)).cpu()).tolist()
        seconds = time.perf_counter() - self.t0
        record = {"step": step, "epoch": epoch, "lr": lr, "samples_per_s": global_batch * self.steps / seconds,
                  "step_time": seconds / self.steps, "data_time": self.data_time / self.steps}
        record.update({n: float(v) for n, v in zip(names, means.tolist())})
        record.update({f"skipped_{r}": int(c) for r, c in zip(REASONS, skipped)})
        return record
