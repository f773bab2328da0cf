"""The training loop of `xclr-train` (one process per rank under torchrun, or a single process): set-up, epochs of
steps (`xclr_train.step`), checkpoints.

Run directory::

    RUN/config.json              the options of the run (what a resume must match)
    RUN/metrics.jsonl            rank 0, every --log-every steps: loss, lr, samples/s, data vs step time, target
                                 statistics (see `xclr_train.objectives.base`), skipped samples by reason, the
                                 gradient norm before clipping (when --clip-grad clips)
    RUN/checkpoints/latest.pt    after every epoch, and at the step a scheduler's signal stopped the run;
                                 epoch-NNNN.pt every --save-every epochs (`xclr_train.checkpoint`)

An epoch is a checkpoint interval of ``samples_per_epoch // (batch_size * world_size)`` steps over resampled shards
(`xclr_train.data`); each epoch's data stream is seeded by (seed, epoch, rank, worker). A run killed at any moment
and resumed with ``--resume latest`` repeats the interrupted epoch exactly; a run stopped by SIGTERM or SIGUSR1
(`xclr_train.preemption`) saves at that step, with each rank's place in its stream and its open metrics window
(`xclr_train.inside_epoch`), and resumes there. Either way it ends as an uninterrupted run would (bit for bit on
the CPU).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from xclr_schemas import load_npy
from xclr_schemas.names import CHECKPOINTS, CONFIG, LATEST
from xclr_schemas.shards import EMBEDDING_SUFFIX, META_SUFFIX, NEIGHBORS_SUFFIX
from xclr_train.augment import RECIPES, draw_photometric, step_generator
from xclr_train.checkpoint import (
    CheckpointError,
    Found,
    epoch_name,
    load_checkpoint,
    non_finite,
    read_checkpoint,
    read_latest,
    save_checkpoint,
)
from xclr_train.compiling import compile_encoder
from xclr_train.config import FREE_OPTIONS, TrainConfig
from xclr_train.data import (
    REASONS,
    DataError,
    EpochStart,
    InputChanged,
    Position,
    Rows,
    ShardSet,
    ShardStream,
    find_shards,
    first_sample,
    make_loader,
    shut_down,
)
from xclr_train.distributed import Dist, all_reduce_sum, any_rank, init_distributed, rank_timeouts
from xclr_train.errors import TrainError
from xclr_train.in_run_eval import InRunEval
from xclr_train.inside_epoch import InsideEpoch, gather_states
from xclr_train.metrics_log import MetricsLog, last_step
from xclr_train.models import Encoder, ModelConfig, family
from xclr_train.objectives import OBJECTIVES, Graph, Objective, Options
from xclr_train.optim import default_warmup, lr_at, make_optimizer, resolve
from xclr_train.preemption import Preempted, Preemption, blocked
from xclr_train.recompute import recompute_in_backward
from xclr_train.step import Stepper


@dataclass(frozen=True)
class Schedule:
    """Steps and learning rate: an epoch is `steps_per_epoch` global batches; `total` steps in all, the last epoch
    possibly cut short; linear warmup to `peak_lr` over `warmup` steps, then cosine decay (`xclr_train.optim`)."""
    global_batch: int
    steps_per_epoch: int
    total: int
    epochs: int
    warmup: int
    peak_lr: float


@dataclass
class Session:
    """Everything `set_up` builds for a run, and where the run stands (`epoch`, `step`, `skipped`: the skip counts
    of all ranks in the finished epochs; `inside`: this rank's place inside epoch `epoch` when the run resumes, or
    stops, there; `preempted`: a signal stopped it; `saved`: the last checkpoint written or resumed from, with its
    step, as an error names it)."""
    cfg: TrainConfig
    dist: Dist
    run: Path
    schedule: Schedule
    stepper: Stepper  # the objective, the (DDP-wrapped) learner, optimizer, scaler, autocast
    loader: torch.utils.data.DataLoader
    stream: ShardStream
    model_config: ModelConfig
    epoch: int
    step: int
    skipped: torch.Tensor
    inside: InsideEpoch | None = None
    preempted: bool = False
    evaluator: InRunEval | None = None  # --eval-data
    saved: str = "none: no checkpoint was written before it"


def train(cfg: TrainConfig, preemption: Preemption, after_save: Callable[[], None] | None = None) -> dict:
    """Train; returns the last logged metrics. Raises TrainError (DataError, CheckpointError) on bad input.

    `preemption` (entered) records SIGTERM and SIGUSR1; when one stopped the run (`xclr_train.preemption`) it raises
    Preempted, after the checkpoint at that step. `after_save` is called on the main rank after every checkpoint
    (the command line publishes a URL run there).
    """
    with rank_timeouts(cfg.rank_timeout):  # a wait for another rank past --rank-timeout: RankTimeout, one line
        return _train(cfg, preemption, after_save)


def _train(cfg: TrainConfig, preemption: Preemption, after_save: Callable[[], None] | None) -> dict:
    s = set_up(cfg)
    log = MetricsLog(s.run, s.step) if s.dist.is_main else None
    bar = tqdm(total=s.schedule.total, initial=s.step, unit="step", disable=not (s.dist.is_main and cfg.progress),
               dynamic_ncols=True)
    last: dict = {}
    try:
        if any_rank(preemption.signal is not None, s.dist):
            raise Preempted(f"stopped by {preemption.name} before the first step, with nothing to save: run the same "
                            "command with --resume latest to go on")
        if s.evaluator is not None and s.step > 0:  # a resume at a step whose evaluation a stop left out
            s.evaluator.after_step(s.step, s.stepper.objective.learner.encoder, log)
        while s.step < s.schedule.total and not s.preempted:
            last = train_epoch(s, log, bar, preemption) or last
            checkpoint(s, after_save)
        if s.evaluator is not None and s.step == s.schedule.total:
            s.evaluator.at_end(s.step, s.stepper.objective.learner.encoder, log)
        if s.preempted and s.step < s.schedule.total:
            raise Preempted(f"stopped by {preemption.name} at step {s.step} of {s.schedule.total}, saved in "
                            f"{CHECKPOINTS}/{LATEST}: run the same command with --resume latest to go on")
    finally:
        bar.close()
        if log is not None:
            log.close()
        if s.dist.world_size > 1:
            torch.distributed.destroy_process_group()
    return last


def checkpoint(s: Session, after_save: Callable[[], None] | None) -> None:
    """The main rank saves (`save`) and publishes; every rank waits for that and learns whether it failed (a full
    disk, non-finite weights), so that all stop together with a TrainError. After a stop the wait matters too:
    torchrun ends the whole group once one rank has exited, which would kill the main rank in the middle of its
    save."""
    failed: TrainError | None = None
    inside = gather_states(s.inside, s.dist) if s.inside is not None else None  # every rank's place, for rank 0
    if s.dist.is_main:
        try:
            save(s, inside)
            if after_save is not None:
                after_save()
        except TrainError as exc:
            failed = exc
    if any_rank(failed is not None, s.dist) and failed is None:
        raise CheckpointError(f"the main rank could not write the checkpoint at step {s.step} (its error says why)")
    if failed is not None:
        raise failed
    s.saved = f"{s.run / CHECKPOINTS / LATEST} (step {s.step})"


def set_up(cfg: TrainConfig) -> Session:
    """The run's schedule, objective, model, optimizer and data stream, resumed from --resume where asked."""
    options = cfg.objective_args()
    dist = init_distributed(cfg.device, cfg.rank_timeout)
    shards = find_shards(cfg.data)
    objective, k, caption_dim = _objective(cfg, options, shards)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if dist.device.type == "cuda" else "fp32")
    if precision != "fp32" and dist.device.type != "cuda":
        raise TrainError(f"--precision {precision} needs a GPU; use fp32 on the CPU")

    torch.manual_seed(cfg.seed)
    mconf = ModelConfig(cfg.arch, cfg.image_size, cfg.proj_hidden, objective.projection_dim(cfg.proj_dim, caption_dim),
                        cfg.patch_size)
    resume_from = _checkpoint_to_resume(cfg)  # read, and its digest checked, before anything is built
    # --init only starts a new run: a resumed one takes every weight from its checkpoint
    encoder = Encoder(mconf, Path(cfg.init) if cfg.init and resume_from is None else None)
    settings = resolve(family(encoder.backbone), cfg.batch_size * dist.world_size, cfg.optimizer, cfg.lr,
                       cfg.weight_decay, cfg.clip_grad)
    cfg = replace(cfg, **asdict(settings))  # config.json and every resume see the resolved values
    schedule = _schedule(cfg, shards, dist.world_size)
    learner = objective.build(encoder, mconf.proj_dim, cfg.proj_hidden, k, cfg.seed, dist.device, dist.world_size)
    prepare_encoder(encoder, cfg, dist.device)
    optimizer = make_optimizer(cfg.optimizer, learner, cfg.lr, cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    ddp = DistributedDataParallel(learner, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None) \
        if dist.world_size > 1 else learner
    stream = ShardStream(shards, cfg.batch_size, cfg.image_size, cfg.augment, objective.needs, Rows(k, caption_dim),
                         cfg.seed, dist.rank)
    loader = make_loader(stream, cfg.workers, pin_memory=dist.device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16) \
        if precision != "fp32" else nullcontext()
    stepper = Stepper(objective, ddp, optimizer, scaler, autocast, RECIPES[cfg.augment], cfg.clip_grad, dist.rank,
                      cfg.micro_batch)
    s = Session(cfg, dist, Path(cfg.out), schedule, stepper, loader, stream, mconf, 0, 0,
                torch.zeros(len(REASONS), dtype=torch.long))
    _start(s, resume_from)
    s.evaluator = InRunEval.build(cfg, dist)  # reads and decodes the eval set once, before any step
    return s


def prepare_encoder(encoder: Encoder, cfg: TrainConfig, device: torch.device) -> None:
    """--grad-checkpointing (`xclr_train.recompute`) and --compile (`xclr_train.compiling`, checked on `device`)
    applied to a built encoder, in place."""
    if cfg.grad_checkpointing:
        recompute_in_backward(encoder)
    if cfg.compile:
        compile_encoder(encoder, device)


def train_epoch(s: Session, log: MetricsLog | None, bar: tqdm, preemption: Preemption) -> dict:
    """The rest of epoch `s.epoch` (from `s.inside` when the run resumed inside it): its steps up to the schedule's
    total, a metrics line every --log-every steps; returns the last line ({} if none) and advances `s.epoch`,
    `s.step` and `s.skipped`. After a step that any rank was signalled in, it stops: `s.preempted`, and, inside the
    epoch, `s.inside` holds where this rank stands."""
    cfg, dist, sched = s.cfg, s.dist, s.schedule
    end = min((s.epoch + 1) * sched.steps_per_epoch, sched.total)
    inside, s.inside = s.inside, None
    s.stream.epoch = s.epoch
    s.stream.start = inside.start if inside is not None else EpochStart()
    with blocked():  # the workers start with the stop signals held back, until they ignore them
        batches = iter(s.loader)
    positions = dict(s.stream.start.positions)  # DataLoader worker -> its place and running counts in this epoch
    window = _Window(dist.device, inside)
    last: dict = {}
    try:
        while s.step < end and not s.preempted:
            t0 = time.perf_counter()
            batch = next(batches)
            window.data_time += time.perf_counter() - t0
            positions[int(batch.pop("worker"))] = Position(int(batch.pop("taken")),
                                                           tuple(batch.pop("skipped").tolist()))
            batch = {key: value.to(dist.device, non_blocking=True) for key, value in batch.items()}
            lr = lr_at(s.step, sched.total, sched.warmup, sched.peak_lr)
            images = torch.cat([batch.pop("view1"), batch.pop("view2")])
            params = draw_photometric(len(images), s.stepper.recipe, step_generator(cfg.seed, dist.rank, s.step))
            loss, stats = s.stepper.step(images, params, batch, lr, s.step, sched.total)
            s.step += 1
            window.add(loss, stats, s.step)
            bar.update(1)
            if s.step % cfg.log_every == 0 or s.step == sched.total:
                _stop_if_not_finite(s, window)
                last = window.summary(s.step, s.epoch, lr, sched.global_batch, s.skipped, _total(positions))
                if log is not None:
                    log.write(last)
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                window = _Window(dist.device)
            s.preempted = any_rank(preemption.signal is not None, dist)
            if s.evaluator is not None and not s.preempted:  # at a stop, the resume evaluates (`train`)
                window.t0 += s.evaluator.after_step(s.step, s.stepper.objective.learner.encoder, log)
    finally:  # the workers end also when a step or a worker raised (`data.shut_down`)
        shut_down(batches)
    _stop_if_not_finite(s, window)  # before any checkpoint of these steps
    if s.step < end:  # stopped inside the epoch
        s.inside = InsideEpoch(EpochStart(s.step - s.epoch * sched.steps_per_epoch, positions), max(1, cfg.workers),
                               window.steps, dict(window.sums), time.perf_counter() - window.t0, window.data_time)
        return last
    s.skipped = s.skipped + all_reduce_sum(_total(positions).to(dist.device)).cpu()
    s.epoch += 1
    return last


def save(s: Session, inside: list[dict] | None) -> None:
    """The checkpoint after epoch `s.epoch` (main rank): epoch-NNNN.pt every --save-every epochs and at the end, then
    latest.pt (so latest is never behind); inside an epoch (a preempted run) latest.pt only, with `inside`, every
    rank's place (`inside_epoch.gather_states`). A state with a non-finite tensor is never written: TrainError."""
    objective, stepper = s.stepper.objective, s.stepper
    state = {"model": objective.learner.encoder.state_dict(), "model_config": asdict(s.model_config),
             "method": objective.state_dict(), "optimizer": stepper.optimizer.state_dict(),
             "scaler": stepper.scaler.state_dict(), "epoch": s.epoch, "step": s.step, "skipped": s.skipped,
             "config": _options(s.cfg, objective, s.dist.world_size), "inputs": s.stream.shards.stamps,
             "inside": inside}
    bad = non_finite(state)
    if bad is not None:
        raise TrainError(f"{bad} is not finite after step {s.step} (every loss was): stopped without saving; the "
                         f"last good checkpoint is {s.saved}")
    folder = s.run / CHECKPOINTS
    if s.inside is None and (s.epoch % s.cfg.save_every == 0 or s.epoch == s.schedule.epochs):
        save_checkpoint(folder / epoch_name(s.epoch), state)
    save_checkpoint(folder / LATEST, state)


def _stop_if_not_finite(s: Session, window: _Window) -> None:
    """A TrainError on every rank when any rank's loss was not finite at a step of `window` (one all-reduce of the
    first such step), so that no checkpoint is written after it."""
    first = window.first_bad.reshape(1).cpu()
    if s.dist.world_size > 1:
        torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN, group=s.dist.cpu_group)
    if int(first) != _Window.NONE:
        raise TrainError(f"the loss was not finite (NaN or infinite) at step {int(first)} of {s.schedule.total}: "
                         f"stopped without saving; the last good checkpoint is {s.saved} (the usual causes: a "
                         "learning rate too high for this model and batch, or bad input)")


def _schedule(cfg: TrainConfig, shards: ShardSet, world_size: int) -> Schedule:
    samples_per_epoch = cfg.samples_per_epoch or shards.samples
    if samples_per_epoch is None:
        raise DataError(f"{cfg.data} has no sizes.json covering its shards: give --samples-per-epoch")
    global_batch = cfg.batch_size * world_size
    steps_per_epoch = samples_per_epoch // global_batch
    if steps_per_epoch == 0:
        raise TrainError(f"--samples-per-epoch {samples_per_epoch} is less than one global batch ({global_batch})")
    total = cfg.steps or cfg.epochs * steps_per_epoch
    return Schedule(global_batch, steps_per_epoch, total, math.ceil(total / steps_per_epoch),
                    cfg.warmup_steps if cfg.warmup_steps is not None else default_warmup(total), cfg.lr)


def _objective(cfg: TrainConfig, options: Options, shards: ShardSet) -> tuple[Objective, int | None, int | None]:
    """The objective over the shards' graph, checked against the first sample's members; k and the caption
    embedding size when present."""
    graph = (shards.manifest or {}).get("graph", {})
    background = graph.get("background_similarity", {}).get("mean")
    objective = OBJECTIVES[cfg.loss](options, Graph(background, graph.get("kth_similarity_mean")))
    sample, needs, why = first_sample(shards), objective.needs, objective.needs_reason
    if needs.neighbors and NEIGHBORS_SUFFIX not in sample:
        raise DataError(f"{why} needs KEY.{NEIGHBORS_SUFFIX} in every sample; {shards.urls[0]} has none (write the "
                        f"shards with xclr-prep graph)")
    if needs.embedding and EMBEDDING_SUFFIX not in sample:
        raise DataError(f"{why} needs KEY.{EMBEDDING_SUFFIX} (caption embeddings) in every sample; {shards.urls[0]} "
                        f"has none (write the shards with xclr-prep graph --with-embeddings)")
    if needs.labels and "label" not in json.loads(sample.get(META_SUFFIX, b"{}")):
        raise DataError(f"{why} needs a \"label\" in every KEY.{META_SUFFIX}; {shards.urls[0]} has none (embed with "
                        f"--label-col)")
    k = len(load_npy(sample[NEIGHBORS_SUFFIX])) if needs.neighbors else None
    caption_dim = len(load_npy(sample[EMBEDDING_SUFFIX])) if EMBEDDING_SUFFIX in sample else None
    return objective, k, caption_dim


def _options(cfg: TrainConfig, objective: Objective, world_size: int) -> dict:
    """The options that define what a run computes (a resume must repeat them): the run's, and the objective's with
    their defaults filled in."""
    options = {k: v for k, v in asdict(cfg).items() if k not in (*FREE_OPTIONS, "loss_options")}
    own = asdict(objective.args)
    if set(own) & set(options):
        raise TypeError(f"--loss {cfg.loss} has options named as the run's: {sorted(set(own) & set(options))}")
    return {**options, **own, "world_size": world_size}


def _checkpoint_to_resume(cfg: TrainConfig) -> Found | None:
    """The checkpoint --resume names, read, or None for a new run: ``--resume latest`` with no latest.pt yet starts a
    new run (as open_clip does), so one command line serves the first start and every restart (torchrun
    --max-restarts); with a damaged latest.pt it takes the newest intact epoch-NNNN.pt (`checkpoint.read_latest`)."""
    if cfg.resume == "latest":
        return read_latest(Path(cfg.out) / CHECKPOINTS)
    return None if cfg.resume is None else Found(Path(cfg.resume), read_checkpoint(Path(cfg.resume)))


def _start(s: Session, found: Found | None) -> None:
    """Where `s` starts: a new run (writes config.json), or the checkpoint `found`, which must hold this run's model
    and options and have read the shards this run reads."""
    cfg, run = s.cfg, s.run
    options = _options(cfg, s.stepper.objective, s.dist.world_size)
    if found is None:
        if cfg.resume is None and (run / CHECKPOINTS / LATEST).exists():
            raise CheckpointError(f"{run} already holds a run: resume it with --resume latest or choose another --out")
        if s.dist.is_main:
            run.mkdir(parents=True, exist_ok=True)
            (run / CONFIG).write_text(json.dumps(options, indent=2, sort_keys=True) + "\n")
        return
    path, state = found.path, load_checkpoint(found.path, asdict(s.model_config), found.state)
    theirs = state["config"]
    changed = sorted(k for k in set(options) | set(theirs) if options.get(k) != theirs.get(k))
    if changed:
        raise CheckpointError(f"{path} was trained with other options: "
                              + ", ".join(f"{k}={theirs.get(k)!r} (now {options.get(k)!r})" for k in changed))
    moved = s.stream.shards.changed(state["inputs"]) if "inputs" in state else []
    if moved:
        raise InputChanged(f"the shards changed since {path} was written ({moved[0]}"
                           + (f"; and {len(moved) - 1} more" if len(moved) > 1 else "") + "): a resume reads the "
                           "shards the run started with; put them back, or start a new run in another --out")
    s.stepper.objective.learner.encoder.load_state_dict(state["model"])
    s.stepper.objective.load_state_dict(state["method"])
    s.stepper.optimizer.load_state_dict(state["optimizer"])
    s.stepper.scaler.load_state_dict(state["scaler"])
    s.epoch, s.step, s.skipped = state["epoch"], state["step"], state["skipped"]
    s.saved = f"{path} (step {s.step})"
    if found.passed_over is not None and s.dist.is_main:
        logged = last_step(run)  # the last step the run got to, as far as its log says
        again = (f"steps {s.step + 1} to {logged} are" if logged > s.step + 1 else f"step {s.step + 1} is"
                 if logged == s.step + 1 else f"the steps after {s.step} are")
        print(f"xclr-train: warning: {found.passed_over}; resuming from {path} (step {s.step}) instead: {again} "
              "trained again", file=sys.stderr, flush=True)
    if state.get("inside") is not None:
        s.inside = InsideEpoch.from_state(state["inside"][s.dist.rank], s.dist.device)
        if s.inside.workers != max(1, cfg.workers):
            raise CheckpointError(f"{path} was saved inside an epoch by {s.inside.workers} DataLoader worker(s) a "
                                  f"rank, whose streams it goes on with: resume it with --workers "
                                  f"{s.inside.workers}")


def _total(positions: dict[int, Position]) -> torch.Tensor:
    """The skip counts of a rank's workers, summed."""
    return sum((torch.tensor(p.skipped) for p in positions.values()), torch.zeros(len(REASONS), dtype=torch.long))


class _Window:
    """Sums over the steps since the last log line, and the first of them whose loss was not finite on this rank
    (`first_bad`, NONE if none; kept on the device, so it costs no synchronisation until it is read)."""
    NONE = 2**62

    def __init__(self, device: torch.device, inside: InsideEpoch | None = None) -> None:
        """An empty window, or the one open when a checkpoint inside the epoch was written."""
        self.device, self.steps, self.data_time, self.t0 = device, 0, 0.0, time.perf_counter()
        self.first_bad = torch.full((), self.NONE, dtype=torch.long, device=device)
        self.sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
        if inside is not None:
            self.steps, self.data_time = inside.window_steps, inside.window_data_time
            self.t0 -= inside.window_seconds
            self.sums.update(inside.window_sums)

    def add(self, loss: torch.Tensor, stats: dict[str, torch.Tensor], step: int) -> None:
        """Step `step` (counted from 1) gave `loss` and `stats`."""
        self.steps += 1
        self.sums["loss"] += loss.detach()
        self.first_bad = torch.minimum(self.first_bad, torch.where(loss.detach().isfinite(), self.NONE, step))
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
