"""Training cost: the X-CLR loss, a whole training step and the input pipeline, each against a baseline measured
in the same run (absolute times on a shared machine are noisy; ratios within one run much less so).

    .venv/bin/python benchmarks/bench_train.py --shards runs/dev/tux-shards --out benchmarks/results/train_cpu.json
    PYTHONPATH=schemas:trainer python3 benchmarks/bench_train.py --device cuda --m 1024 --m 4096 --m 16384 \
        --shards runs/dev/tux-shards --workers 8 --out benchmarks/results/train_gpu_h100.json

Imports only torch, numpy, xclr_train and xclr_schemas (webdataset and Pillow only for section 3), so it runs from a
plain checkout with PYTHONPATH=schemas:trainer (section 3 also needs webdataset and braceexpand importable).

Synthetic batch content (sections 1 and 2): M samples in neighbour groups of 8 consecutive samples holding 4
captions twice each (U = M / 2 distinct caption ids, drawn from a pool of 1e6); a caption's k = 32 neighbours are the
other 3 captions of its group, then random ids of the pool; similarities descend 0.9 .. 0.4; floor 0.2.

1. Loss (--m, default 1024 and 4096; d = 128; --device): forward + backward, median of interleaved repeats after a
   warm-up, of
     simclr      `losses.nt_xent_loss(z1, z2)`: the baseline
     targets     `targets.sparse_similarity(...)` alone (no backward)
     xclr        `targets.sparse_similarity(...)` + `losses.xclr_loss(z1, z2, S)`
     dense       `targets.dense_similarity_rows(E, E)` (E: M x 384) + `losses.xclr_loss`
     objective   the trainer's X-CLR objective (`xclr_train.objectives`, floor 0.2) on one rank holding the
                 whole batch (targets + loss + the logged target statistics), what the trainer pays
     per-rank    the same objective for one rank of a global batch M holding B = --batch-size local samples (2B
                 anchor rows against 2M columns); the other ranks' columns come from a stand-in for the gathers
                 (communication not counted), as under DDP with M / B ranks; against the same for the
                 simclr objective
   Ratios: each against simclr (aim: xclr / simclr <= 1.3 on the CPU). All take turns within each repeat.
2. Step (--arch, --image-size, --batch-size B): the trainer's own training step (`xclr_train.step.Stepper`) on
   synthetic uint8 crops: SimCLR's photometric ops on the device (`photometric`), forward of the 2B views through
   the X-CLR objective's learner over `models.Encoder(ModelConfig(arch, image_size, 2048, 128))`, the objective,
   backward, the optimizer step of the backbone family's recipe (`optim.resolve`: LARS for BatchNorm nets; AdamW
   with gradient clipping for the rest); on CUDA bf16 autocast and channels_last. The same for each --backbone
   (NAME or NAME@PATCH, a timm ViT's patch size; default: ViT-S/16 and timm's ResNet-50, at patch 4 on the CPU's
   32 px), reported in the "backbones" list.
   Reported: steps/s, samples/s (a sample = two views), a per-phase breakdown (synchronised after each phase), and
   the loss + targets time (the objective's forward + backward, timed alone) as a fraction of the step time at
   M = B and, from section 1, at each --m (whole batch on one rank, and one rank's share of a global batch M).
   The issue's GPU aim: under 3% of a ResNet-50 step.
3. Input pipeline (--shards DIR; skipped without): samples/s of `data.ShardStream` (X-CLR sparse needs, the step's
   batch and image size, --augment simclr) through `data.make_loader` with 1 and --workers DataLoader workers, over
   a fixed number of batches after one warm-up batch per worker, taking turns (--pipeline-repeats, medians) with
   the old worker path on the same shards: the same stages with each view made whole in the worker by
   torchvision per image (`OldWorkerPath`). Per worker against the model's samples/s (workers a rank needs), and
   two plain loops in this process on one thread over the same images, in memory: decode + the two uint8 crops,
   and decode + two whole torchvision SimCLR views.
4. Photometric ops (--image-size, 2B views, one thread, so per CPU core): SimCLR's colour jitter, grayscale, blur
   and normalisation per view by `photometric` on a uint8 batch, by kornia's batched augmentations (per-image
   factors, but one jitter order per batch) when kornia is installed, and by torchvision per image on PIL crops.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xclr_train.augment import MEAN, RECIPES, STD, Photometric, draw_photometric
from xclr_train.data import ShardStream
from xclr_train.distributed import Gathers
from xclr_train.losses import nt_xent_loss, xclr_loss
from xclr_train.models import Encoder, ModelConfig, family
from xclr_train.objectives import Graph, Objective, Views, make_objective
from xclr_train.optim import Settings, make_optimizer, resolve
from xclr_train.photometric import blur_width, photometric
from xclr_train.step import Stepper
from xclr_train.targets import dense_similarity_rows, sparse_similarity

D, K, GROUP, POOL, FLOOR, EMB_DIM = 128, 32, 8, 1_000_000, 0.2, 384
GRAPH = Graph(background=FLOOR, kth_mean=FLOOR)  # the floor: min(background, kth_mean)
XCLR = make_objective("xclr", {}, GRAPH)
SIMCLR = make_objective("simclr", {}, Graph())
DEFAULTS = {"cpu": {"arch": "resnet18", "image_size": 32, "batch_size": 32, "steps": 8, "budget": 30.0,
                    "backbones": ["vit_small_patch16_224@4", "timm:resnet50"]},
            "cuda": {"arch": "resnet50", "image_size": 224, "batch_size": 256, "steps": 30, "budget": 5.0,
                     "backbones": ["vit_small_patch16_224", "timm:resnet50"]}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(m: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """caption_id (M,), nbr_id (M, K), nbr_sim (M, K) as described in the module docstring."""
    g = torch.Generator().manual_seed(seed)
    per_group = GROUP // 2
    i = torch.arange(m)
    cap_index = (i // GROUP) * per_group + (i % GROUP) % per_group
    u = int(cap_index.max()) + 1
    captions = torch.randperm(POOL, generator=g)[:u]
    nbr = torch.randint(POOL, (u, K), generator=g)  # random pool captions ...
    c = torch.arange(u)
    base = (c // per_group) * per_group
    for j in range(1, per_group):  # ... after the other captions of the group, most similar first
        mate = base + (c % per_group + j) % per_group
        ok = mate < u
        nbr[ok, j - 1] = captions[mate[ok]]
    sims = torch.linspace(0.9, 0.4, K).expand(u, K)
    return {"caption_id": captions[cap_index].to(device), "nbr_id": nbr[cap_index].contiguous().to(device),
            "nbr_sim": sims[cap_index].contiguous().to(device)}


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def bench_interleaved(fns: dict, device: torch.device, budget: float, max_repeats: int) -> tuple[dict, int]:
    """Median seconds of each fn; the fns take turns in every repeat, so that load changes on a shared machine
    touch them alike. Repeats: as many as fit `budget` seconds, at least 5 and at most `max_repeats`."""
    warm = {name: timed(fn, device) for name, fn in fns.items()}
    if device.type == "cuda":
        warm = {name: timed(fn, device) for name, fn in fns.items()}
    repeats = max(5, min(max_repeats, int(budget / max(sum(warm.values()), 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}, repeats


def fwd_bwd(loss_fn, *leaves: torch.Tensor):
    def run() -> None:
        loss_fn().backward()
        for leaf in leaves:
            leaf.grad = None
    return run


def loss_of(objective: Objective, z1: torch.Tensor, z2: torch.Tensor, batch: dict) -> torch.Tensor:
    """The objective's loss for rank 0 holding projections z1, z2 of `batch`."""
    return objective.rows(Views(z1, z2), batch, 0)[0]


def one_rank_of(global_batch: dict[str, torch.Tensor], m: int, d: int,
                device: torch.device) -> tuple[dict[str, torch.Tensor], Gathers]:
    """Rank 0's batch in a world of M / m ranks, and gathers that stand in for the other ranks: `gather` of a local
    batch tensor (a slice of the global one, so the same data pointer) returns the global tensor; `with_grad` of m
    rows appends the other ranks' (fixed, random unit) projections, keeping the gradient of this rank's rows as the
    real all-gather does."""
    big_m = len(global_batch["caption_id"])
    others = F.normalize(torch.randn(big_m - m, d, device=device), dim=1)
    by_ptr = {t.data_ptr(): t for t in global_batch.values()}
    gathers = Gathers(gather=lambda x: by_ptr[x.data_ptr()], with_grad=lambda x: torch.cat([x, others.to(x.dtype)]))
    return {key: t[:m] for key, t in global_batch.items()}, gathers


def bench_loss(m: int, b: int, device: torch.device, budget: float, max_repeats: int) -> dict:
    torch.manual_seed(m)
    z1, z2 = (torch.randn(m, D, device=device, requires_grad=True) for _ in range(2))
    emb = torch.randn(m, EMB_DIM, device=device)
    batch = synthetic_batch(m, device)
    ids, nbr, sims = batch["caption_id"], batch["nbr_id"], batch["nbr_sim"]
    fns = {
        "simclr": fwd_bwd(lambda: nt_xent_loss(z1, z2), z1, z2),
        "targets": lambda: sparse_similarity(ids, nbr, sims, FLOOR),
        "xclr": fwd_bwd(lambda: xclr_loss(z1, z2, sparse_similarity(ids, nbr, sims, FLOOR)), z1, z2),
        "dense": fwd_bwd(lambda: xclr_loss(z1, z2, dense_similarity_rows(emb, emb)), z1, z2),
        "objective": fwd_bwd(lambda: loss_of(XCLR, z1, z2, batch), z1, z2),
    }
    l1, l2 = (torch.randn(b, D, device=device, requires_grad=True) for _ in range(2))
    if b < m:  # one rank's share: its B samples against the global batch of M, and SimCLR's likewise
        local, gathers = one_rank_of(batch, b, D, device)
        xclr, simclr = (make_objective(name, {}, GRAPH, gathers) for name in ("xclr", "simclr"))
        fns["per_rank"] = fwd_bwd(lambda: loss_of(xclr, l1, l2, local), l1, l2)
        fns["per_rank_simclr"] = fwd_bwd(lambda: loss_of(simclr, l1, l2, local), l1, l2)
    seconds, repeats = bench_interleaved(fns, device, budget, max_repeats)
    s = {f"{name}_ms": 1e3 * t for name, t in seconds.items()}
    out = {"m": m, "d": D, "k": K, "repeats": repeats, "local_batch": b if b < m else None, **s}
    for name in ("xclr", "dense", "objective", "targets"):
        out[f"{name}_vs_simclr"] = seconds[name] / seconds["simclr"]
    if "per_rank" in seconds:
        out["per_rank_vs_simclr"] = seconds["per_rank"] / seconds["per_rank_simclr"]
    return out


@dataclass(frozen=True)
class StepSetup:
    """Section 2's step on synthetic input (module docstring): the trainer's Stepper, the family's optimisation
    settings, B samples' uint8 crops [view 1; view 2], their photometric parameters and the X-CLR batch members."""
    stepper: Stepper
    recipe: Settings
    crops: torch.Tensor
    params: Photometric
    batch: dict[str, torch.Tensor]

    def step(self, total: int, marks: list[float] | None = None) -> None:
        """One step (of `total`, at the peak learning rate); with `marks`, the time after each phase, synchronised."""
        def mark() -> None:
            if marks is not None:
                sync(self.crops.device)
                marks.append(time.perf_counter())
        mark()
        self.stepper.step(self.crops, self.params, self.batch, self.recipe.lr, 0, total, mark)


def step_setup(model: ModelConfig, b: int, device: torch.device, micro_batch: int | None = None) -> StepSetup:
    """The X-CLR objective's learner over `Encoder(model)` (projection `model.proj_dim`, K neighbours), the backbone
    family's optimizer for a batch of b, bf16 autocast on CUDA, --micro-batch `micro_batch`; seeded by 0."""
    torch.manual_seed(0)
    encoder = Encoder(model)
    objective = make_objective("xclr", {}, GRAPH)
    learner = objective.build(encoder, model.proj_dim, model.proj_hidden, K, 0, device, 1)
    recipe = resolve(family(encoder.backbone), b, None, None, None, None)
    stepper = Stepper(objective, learner, make_optimizer(recipe.optimizer, learner, recipe.lr, recipe.weight_decay),
                      torch.amp.GradScaler("cuda", enabled=False),
                      torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext(),
                      RECIPES["simclr"], recipe.clip_grad, 0, micro_batch)
    crops = torch.randint(0, 256, (2 * b, 3, model.image_size, model.image_size), dtype=torch.uint8, device=device)
    params = draw_photometric(2 * b, RECIPES["simclr"], torch.Generator()).to(device)
    return StepSetup(stepper, recipe, crops, params, synthetic_batch(b, device))


def bench_step(backbone: str, image_size: int, b: int, steps: int, device: torch.device, budget: float,
               max_repeats: int) -> dict:
    """Section 2 for `backbone` (ARCH or ARCH@PATCH)."""
    cuda = device.type == "cuda"
    arch, _, patch = backbone.partition("@")
    setup = step_setup(ModelConfig(arch, image_size, 2048, D, int(patch) if patch else None), b, device)
    recipe, encoder = setup.recipe, setup.stepper.objective.learner.encoder
    for _ in range(3 if cuda else 2):
        setup.step(steps)
    phases = []
    for _ in range(steps):  # synchronised after every phase
        marks: list[float] = []
        setup.step(steps, marks)
        phases.append(np.diff(marks))
    breakdown = np.median(np.array(phases), axis=0)
    if cuda:  # the headline without the phase synchronisations, which would expose launch overheads
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            setup.step(steps)
        sync(device)
        step_s = (time.perf_counter() - t) / steps
    else:
        step_s = float(statistics.median(np.sum(phases, axis=1)))

    # The objective alone at M = B, on projections of the dtype the model gives, against NT-Xent on the same.
    dtype = torch.bfloat16 if cuda else torch.float32
    z1, z2 = (torch.randn(b, D, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    seconds, _ = bench_interleaved({
        "objective": fwd_bwd(lambda: loss_of(XCLR, z1, z2, setup.batch), z1, z2),
        "simclr": fwd_bwd(lambda: nt_xent_loss(z1, z2), z1, z2)}, device, budget / 3, 50)
    return {"arch": backbone, "image_size": image_size, "batch_size": b, "steps": steps,
            "parameters": sum(p.numel() for p in encoder.backbone.parameters()), "optimizer": recipe.optimizer,
            "clip_grad": recipe.clip_grad, "precision": "bf16" if cuda else "fp32", "step_ms": 1e3 * step_s,
            "steps_per_s": 1 / step_s,
            "samples_per_s": b / step_s, "images_per_s": 2 * b / step_s,
            **{f"{name}_ms": 1e3 * float(t) for name, t in zip(("augment", "forward", "objective_forward",
                                                               "backward", "optimizer"), breakdown)},
            "objective_ms_at_b": 1e3 * seconds["objective"], "simclr_ms_at_b": 1e3 * seconds["simclr"],
            "objective_fraction_at_b": seconds["objective"] / step_s}


def torchvision_simclr(image_size: int, photometric_only: bool = False):
    """The whole SimCLR view per image on a PIL image, as a worker made it before the photometric half moved to the
    device: the baseline of sections 3 and 4 (`photometric_only` leaves out the crop and flip)."""
    from torchvision import transforms as T

    crop = [] if photometric_only else [T.RandomResizedCrop(image_size, scale=(0.08, 1.0), antialias=True),
                                        T.RandomHorizontalFlip()]
    return T.Compose([*crop, T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                      T.RandomApply([T.GaussianBlur(blur_width(image_size), sigma=(0.1, 2.0))], p=0.5),
                      T.ToTensor(), T.Normalize(MEAN, STD)])


class OldWorkerPath(ShardStream):
    """The worker path before the photometric half moved to the device: the same stages, but each view made whole
    in the worker by torchvision per image on the PIL image (float32, normalised), as `decode` did then."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.old_view = torchvision_simclr(self.image_size)

    def view(self, image, rng: random.Random) -> torch.Tensor:
        return self.old_view(image)


@contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def per_second(fn, items: list) -> float:
    torch.manual_seed(0)
    t = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - t)


def bench_pipeline(shards_dir: str, b: int, image_size: int, workers: int, samples: int, step_samples_per_s: float,
                   plain_samples: int, repeats: int) -> dict:
    from collections import Counter

    from xclr_schemas import load_npy
    from xclr_schemas.shards import IMAGE_SUFFIXES, NEIGHBORS_SUFFIX
    from xclr_train.augment import crop_view
    from xclr_train.data import Needs, decode_image, find_shards, first_sample, make_loader, read_tar

    shards = find_shards(shards_dir)
    k = len(load_npy(first_sample(shards)[NEIGHBORS_SUFFIX]))
    out: dict = {"shards": shards_dir, "shard_files": len(shards.urls), "shard_samples": shards.samples,
                 "batch_size": b, "image_size": image_size, "k": k, "runs": []}
    def rate(stream: ShardStream, w: int, n_batches: int) -> float:
        it = iter(make_loader(stream, workers=w, pin_memory=False))
        for _ in range(w):  # one warm-up batch per worker (process start, first shard open)
            next(it)
        t = time.perf_counter()
        n = sum(len(next(it)["caption_id"]) for _ in range(n_batches))
        return n / (time.perf_counter() - t)

    for w in sorted({1, workers}):
        n_batches = w * math.ceil(samples / (b * w))
        new, old = ShardStream(shards, b, image_size, "simclr", Needs(True, False), k, seed=0, rank=0), \
            OldWorkerPath(shards, b, image_size, "simclr", Needs(True, False), k, seed=0, rank=0)
        rates = {"new": [], "old": []}
        for _ in range(repeats):  # taking turns, so that load changes touch both alike
            rates["new"].append(rate(new, w, n_batches))
            rates["old"].append(rate(old, w, n_batches))
        per_worker, old_per_worker = statistics.median(rates["new"]) / w, statistics.median(rates["old"]) / w
        out["runs"].append({"workers": w, "batches": n_batches, "samples": n_batches * b, "repeats": repeats,
                            "samples_per_s": per_worker * w, "samples_per_s_per_worker": per_worker,
                            "old_samples_per_s_per_worker": old_per_worker, "new_vs_old": per_worker / old_per_worker,
                            "per_worker_vs_model": per_worker / step_samples_per_s if step_samples_per_s else None,
                            "workers_needed": step_samples_per_s / per_worker if step_samples_per_s else None})

    # Plain loops over the same images, in memory, in this process on one thread.
    images = []
    for url in shards.urls:
        for raw in read_tar(url, Counter()):
            images.append(next(raw[s] for s in IMAGE_SUFFIXES if s in raw))
            if len(images) >= plain_samples:
                break
        if len(images) >= plain_samples:
            break
    recipe, old_view, rng = RECIPES["simclr"], torchvision_simclr(image_size), random.Random(0)

    def crops(data: bytes) -> None:
        rgb = decode_image(data, image_size)
        torch.stack([crop_view(rgb, image_size, recipe, rng), crop_view(rgb, image_size, recipe, rng)])

    def old_views(data: bytes) -> None:
        rgb = decode_image(data)
        torch.stack([old_view(rgb), old_view(rgb)])

    with one_thread():
        out["plain_samples"] = len(images)
        out["plain_samples_per_s"] = per_second(crops, images)
        out["old_plain_samples_per_s"] = per_second(old_views, images)
    out["one_worker_vs_plain"] = out["runs"][0]["samples_per_s"] / out["plain_samples_per_s"]
    out["one_worker_vs_old_plain"] = out["runs"][0]["samples_per_s"] / out["old_plain_samples_per_s"]
    return out


def bench_photometric(image_size: int, views: int, device: torch.device) -> dict:
    """Seconds per view of SimCLR's photometric half: `photometric` on the batch, kornia's batched augmentations
    (when installed) and torchvision per image on PIL crops; one thread on the CPU."""
    from PIL import Image

    recipe = RECIPES["simclr"]
    torch.manual_seed(0)
    crops = torch.randint(0, 256, (views, 3, image_size, image_size), dtype=torch.uint8)
    pil = [Image.fromarray(c.permute(1, 2, 0).numpy()) for c in crops]
    per_image = torchvision_simclr(image_size, photometric_only=True)
    on_device = crops.to(device)
    generator = torch.Generator()
    fns = {"xclr": lambda: photometric(on_device, draw_photometric(views, recipe, generator).to(device), recipe),
           "torchvision_per_image": lambda: [per_image(img) for img in pil]}
    try:
        import kornia.augmentation as K
        kornia_aug = K.AugmentationSequential(
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((blur_width(image_size),) * 2, (0.1, 2.0), p=0.5),
            K.Normalize(torch.tensor(MEAN), torch.tensor(STD))).to(device)
        fns["kornia"] = lambda: kornia_aug(on_device.float() / 255)
    except ImportError:
        pass
    with one_thread() if device.type == "cpu" else nullcontext():
        seconds, repeats = bench_interleaved(fns, device, 20.0, 10)
    out = {"image_size": image_size, "views": views, "device": device.type, "repeats": repeats,
           **{f"{name}_ms_per_view": 1e3 * t / views for name, t in seconds.items()}}
    for name in seconds.keys() - {"torchvision_per_image"}:
        out[f"torchvision_per_image_vs_{name}"] = seconds["torchvision_per_image"] / seconds[name]
    return out


def print_tables(results: dict) -> None:
    """The figures of `results` as the markdown tables docs/benchmarks.md quotes."""
    step, b, steps = results["step"], results["options"]["batch_size"], results["options"]["steps"]
    print(f"\n### Loss forward + backward ({results['device']}, {results['device_type']}, d = {D}, k = {K}; median ms; "
          f"per rank: B = {b} local samples of M)\n")
    print("| M | repeats | SimCLR | targets | targets + X-CLR | X-CLR / SimCLR | dense + X-CLR | dense / SimCLR "
          "| objective | objective / SimCLR | per rank: objective | per rank: SimCLR objective | per rank ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["loss"]:
        per_rank = (f"{r['per_rank_ms']:.2f} | {r['per_rank_simclr_ms']:.2f} | {r['per_rank_vs_simclr']:.2f}"
                    if "per_rank_ms" in r else "- | - | -")
        print(f"| {r['m']} | {r['repeats']} | {r['simclr_ms']:.2f} | {r['targets_ms']:.2f} | {r['xclr_ms']:.2f} "
              f"| {r['xclr_vs_simclr']:.2f} | {r['dense_ms']:.2f} | {r['dense_vs_simclr']:.2f} "
              f"| {r['objective_ms']:.2f} | {r['objective_vs_simclr']:.2f} | {per_rank} |")

    print(f"\n### Training step ({step['arch']}, {step['image_size']} px, B = {b}, {step['precision']}; "
          f"median of {steps} steps)\n")
    print("| steps/s | samples/s | step ms | augment ms | forward ms | objective fwd ms | backward ms | optimizer ms "
          "| objective fwd+bwd at M=B ms | SimCLR at M=B ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {step['steps_per_s']:.2f} | {step['samples_per_s']:.1f} | {step['step_ms']:.1f} "
          f"| {step['augment_ms']:.1f} | {step['forward_ms']:.1f} | {step['objective_forward_ms']:.1f} "
          f"| {step['backward_ms']:.1f} "
          f"| {step['optimizer_ms']:.1f} | {step['objective_ms_at_b']:.2f} | {step['simclr_ms_at_b']:.2f} |")
    print("\n| loss + targets at M | whole batch on one rank: % of step | one rank of M / B (B local): % of step |")
    print("|---:|---:|---:|")
    for m, frac in step["objective_fraction"].items():
        per_rank = step["objective_fraction_per_rank"].get(m)
        print(f"| {m} | {100 * frac:.2f} | {'-' if per_rank is None else f'{100 * per_rank:.2f}'} |")

    print(f"\n### Backbones ({step['image_size']} px, B = {b}, {step['precision']}; median of {steps} steps; each "
          f"with its family's optimizer)\n")
    print("| backbone | parameters | optimizer | step ms | samples/s | forward ms | backward ms | optimizer ms "
          "| objective fwd+bwd at M=B: % of step |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in [step, *results["backbones"]]:
        print(f"| {r['arch']} | {r['parameters'] / 1e6:.1f}M | {r['optimizer']} | {r['step_ms']:.1f} "
              f"| {r['samples_per_s']:.1f} | {r['forward_ms']:.1f} | {r['backward_ms']:.1f} | {r['optimizer_ms']:.1f} "
              f"| {100 * r['objective_fraction_at_b']:.2f} |")

    if "pipeline" in results:
        p = results["pipeline"]
        print(f"\n### Input pipeline ({p['shards']}, B = {p['batch_size']}, {p['image_size']} px; model "
              f"{step['samples_per_s']:.1f} samples/s)\n")
        print("| workers | samples | samples/s | per worker | old path per worker | new / old | per worker / model "
              "| workers needed per rank |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in p["runs"]:
            print(f"| {r['workers']} | {r['samples']} | {r['samples_per_s']:.1f} | "
                  f"{r['samples_per_s_per_worker']:.1f} | {r['old_samples_per_s_per_worker']:.1f} "
                  f"| **{r['new_vs_old']:.2f}** | {r['per_worker_vs_model']:.2f} | {r['workers_needed']:.2f} |")
        print(f"\nOne thread, in memory: decode + 2 uint8 crops {p['plain_samples_per_s']:.1f} samples/s, decode + 2 "
              f"torchvision SimCLR views (the old worker path) {p['old_plain_samples_per_s']:.1f}; 1 worker / crops "
              f"= {p['one_worker_vs_plain']:.2f}, **1 worker / old path = {p['one_worker_vs_old_plain']:.2f}**")
    ph = results["photometric"]
    print(f"\n### Photometric ops ({ph['views']} views, {ph['image_size']} px, {ph['device']}; ms per view)\n")
    names = [n[:-len("_ms_per_view")] for n in ph if n.endswith("_ms_per_view")]
    print("| " + " | ".join(names) + " |\n" + "|---:" * len(names) + "|")
    print("| " + " | ".join(f"{ph[n + '_ms_per_view']:.3f}" for n in names) + " |")
    print(f"\nTotal {results['seconds']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--m", type=int, action="append", help="Loss batch sizes M (repeatable; 1024 and 4096).")
    parser.add_argument("--arch", help="cpu: resnet18, cuda: resnet50")
    parser.add_argument("--backbone", action="append", help="Further backbones of section 2, ARCH or ARCH@PATCH "
                        "(repeatable). cpu: vit_small_patch16_224@4 and timm:resnet50; cuda: the same at patch 16.")
    parser.add_argument("--image-size", type=int, help="cpu: 32, cuda: 224")
    parser.add_argument("--batch-size", type=int, help="Step batch B (samples; 2B views). cpu: 32, cuda: 256")
    parser.add_argument("--steps", type=int, help="Timed training steps. cpu: 8, cuda: 30")
    parser.add_argument("--budget", type=float, help="Seconds per loss measurement set. cpu: 30, cuda: 5")
    parser.add_argument("--max-repeats", type=int, default=50)
    parser.add_argument("--shards", help="xclr shards directory for section 3 (skipped without).")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the second pipeline run.")
    parser.add_argument("--pipeline-samples", type=int, default=1500, help="Samples timed per pipeline run.")
    parser.add_argument("--pipeline-repeats", type=int, default=3, help="Turns of the new and the old worker path.")
    parser.add_argument("--plain-samples", type=int, default=300, help="Images of the plain decode baseline.")
    parser.add_argument("--out", type=Path, help="Write all figures as JSON here.")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    d = DEFAULTS[device.type]
    arch, image_size = args.arch or d["arch"], args.image_size or d["image_size"]
    b, steps, budget = args.batch_size or d["batch_size"], args.steps or d["steps"], args.budget or d["budget"]
    sizes = args.m or [1024, 4096]
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                     or platform.machine(), "device_type": device.type, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "options": {"m": sizes, "arch": arch, "image_size": image_size, "batch_size": b, "steps": steps,
                                 "backbones": args.backbone or d["backbones"],
                                 "budget": budget, "max_repeats": args.max_repeats, "shards": args.shards,
                                 "workers": args.workers, "pipeline_samples": args.pipeline_samples,
                                 "plain_samples": args.plain_samples}}
    t0 = time.perf_counter()

    results["loss"] = []
    for m in sizes:
        results["loss"].append(bench_loss(m, b, device, budget, args.max_repeats))
        print(json.dumps(results["loss"][-1]), flush=True)
    results["step"] = step = bench_step(arch, image_size, b, steps, device, budget, args.max_repeats)
    step["objective_fraction"] = {str(b): step["objective_fraction_at_b"]}
    step["objective_fraction_per_rank"] = {}
    for r in results["loss"]:
        step["objective_fraction"][str(r["m"])] = r["objective_ms"] / step["step_ms"]
        if "per_rank_ms" in r:
            step["objective_fraction_per_rank"][str(r["m"])] = r["per_rank_ms"] / step["step_ms"]
    print(json.dumps(step), flush=True)
    results["backbones"] = []
    for backbone in results["options"]["backbones"]:
        results["backbones"].append(bench_step(backbone, image_size, b, steps, device, budget, args.max_repeats))
        print(json.dumps(results["backbones"][-1]), flush=True)
    if args.shards:
        results["pipeline"] = bench_pipeline(args.shards, b, image_size, args.workers, args.pipeline_samples,
                                             step["samples_per_s"], args.plain_samples, args.pipeline_repeats)
        print(json.dumps(results["pipeline"]), flush=True)
    results["photometric"] = bench_photometric(image_size, 2 * b, device)
    print(json.dumps(results["photometric"]), flush=True)
    results["seconds"] = time.perf_counter() - t0

    print_tables(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
