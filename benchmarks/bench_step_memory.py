"""Step time and peak memory of the trainer's step against --micro-batch: each configuration in its own process.

    flock /tmp/xclr-heavy.lock .venv/bin/python benchmarks/bench_step_memory.py --steps 2 \
        --config "--arch resnet18 --image-size 32 --batch-size 64" \
        --out benchmarks/results/step_memory_cpu_resnet18.json
    flock /tmp/xclr-heavy.lock .venv/bin/python benchmarks/bench_step_memory.py --steps 5 \
        --config "--arch test_vit --image-size 16 --patch-size 4 --batch-size 64" \
        --out benchmarks/results/step_memory_cpu_test_vit.json
    PYTHONPATH=schemas:pipeline:trainer python3 benchmarks/bench_step_memory.py --device cuda \
        --out benchmarks/results/step_memory_gpu.json

A configuration is a string of xclr-train options (`--config`, repeatable; default: DEFAULTS for the device), read by
xclr-train's own parser into a TrainConfig. The step is bench_train.py's section 2 (`bench_train.step_setup`: the
trainer's `xclr_train.step.Stepper` with the X-CLR objective on synthetic crops, the backbone family's optimizer, bf16
autocast on CUDA) built from the options in APPLIED; any other option given is an error, not silently ignored (a new
step option is one more entry in APPLIED and `setup_of`). A configuration without --micro-batch is also measured with
--micro-batch B, B/2, ... (`--halvings` of them).

Each configuration runs in a new process (`harness.run_measured`, which samples the RSS of its process tree): it builds
the step, runs `--warmup` steps, records the memory it then holds (the baseline: model, optimizer state, gradients,
input; `settled_memory`), writes the marker file and runs `--steps` timed steps, each phase synchronised
(`StepSetup.step`). Reported per configuration: the median step time and phase times (photometric, forward or pass 1,
loss, backward or pass 2, optimizer), and the peak memory above the baseline: on the CPU the sampled peak anonymous RSS
after the marker less the baseline (every PERIOD s, so a peak shorter than that can be missed; several steps make that
unlikely), on a GPU torch.cuda.max_memory_allocated less the memory allocated at the marker. Ratios are against the same
options without --micro-batch, measured in the same run: the step time ratio is the price of the second forward.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import psutil
import torch
from bench_train import StepSetup, step_setup
from harness import run_measured

from xclr_train.cli import config_of
from xclr_train.cli import main as train_command
from xclr_train.config import TrainConfig
from xclr_train.models import ModelConfig
from xclr_train.train import prepare_encoder

PHASES = ("photometric", "forward", "loss", "backward", "optimizer")
PERIOD = 0.01  # seconds between RSS samples
APPLIED = ("arch", "image_size", "patch_size", "proj_hidden", "proj_dim", "batch_size", "micro_batch",
           "grad_checkpointing", "compile")
IGNORED = ("data", "out")  # given as placeholders to the parser
DEFAULTS = {"cpu": ["--arch resnet18 --image-size 32 --batch-size 64",
                    "--arch test_vit --image-size 16 --patch-size 4 --batch-size 64"],
            "cuda": ["--arch resnet50 --image-size 224 --batch-size 256",
                     "--arch vit_small_patch16_224 --image-size 224 --batch-size 256"]}


def train_config(options: str) -> TrainConfig:
    """The TrainConfig of xclr-train OPTIONS (a string); SystemExit for an option the step here does not apply."""
    ctx = train_command.make_context("xclr-train", [*shlex.split(options), "--data", "-", "--out", "-"])
    cfg = config_of(ctx.params)
    default = TrainConfig("-", "-")
    foreign = [f.name for f in fields(TrainConfig)
               if f.name not in APPLIED + IGNORED and getattr(cfg, f.name) != getattr(default, f.name)]
    if foreign:
        raise SystemExit(f"--config {options!r}: this benchmark does not apply {', '.join(foreign)}")
    return cfg


def options_of(cfg: TrainConfig) -> str:
    """The options of APPLIED that differ from their defaults, as xclr-train takes them."""
    default = TrainConfig("-", "-")
    return " ".join(f"--{name.replace('_', '-')}" + ("" if getattr(cfg, name) is True else f" {getattr(cfg, name)}")
                    for name in APPLIED if getattr(cfg, name) != getattr(default, name))


def with_chunks(cfg: TrainConfig, halvings: int) -> list[TrainConfig]:
    """cfg, and without a micro-batch of its own also with --micro-batch B, B/2, ... (`halvings` of them, whole)."""
    if cfg.micro_batch is not None:
        return [cfg]
    sizes = [cfg.batch_size >> h for h in range(halvings + 1) if cfg.batch_size % (1 << h) == 0]
    return [cfg, *(replace(cfg, micro_batch=n) for n in sizes)]


def setup_of(cfg: TrainConfig, device: torch.device) -> StepSetup:
    """bench_train's step built from the options of APPLIED."""
    model = ModelConfig(cfg.arch, cfg.image_size, cfg.proj_hidden, cfg.proj_dim, cfg.patch_size)
    setup = step_setup(model, cfg.batch_size, device, cfg.micro_batch)
    prepare_encoder(setup.stepper.objective.learner.encoder, cfg, device)
    return setup


def child(options: str, marker: Path, device: torch.device, warmup: int, steps: int) -> None:
    """In the measured process: build, warm up, mark, time; prints the figures as JSON."""
    setup = setup_of(train_config(options), device)
    for _ in range(warmup):
        setup.step(warmup + steps)
    baseline = settled_memory(device)
    marker.write_text("set up")
    phases = []
    for _ in range(steps):
        marks: list[float] = []
        setup.step(warmup + steps, marks)
        phases.append(np.diff(marks))
    out = {"baseline_bytes": baseline, "step_ms": 1e3 * statistics.median(np.sum(phases, axis=1)),
           **{f"{name}_ms": 1e3 * float(t) for name, t in zip(PHASES, np.median(np.array(phases), axis=0))}}
    if device.type == "cuda":
        out["cuda_peak_above_baseline"] = torch.cuda.max_memory_allocated(device) - baseline
    print(json.dumps(out))


def settled_memory(device: torch.device) -> int:
    """The memory held between steps: on a GPU torch's allocated bytes (its peak reset here); on the CPU the
    anonymous RSS (RSS less file-backed pages, which are the libraries' code paged in as it first runs) once the C
    allocator has returned its free pages (malloc_trim), so the baseline holds no freed activations."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    mem = psutil.Process().memory_info()
    return mem.rss - mem.shared


def measure(cfg: TrainConfig, device: torch.device, warmup: int, steps: int, threads: int,
            timeout: float | None = None) -> dict:
    options = options_of(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "set-up"
        run = run_measured([sys.executable, __file__, "--child", options, "--marker", str(marker), "--device",
                            device.type, "--warmup", str(warmup), "--steps", str(steps), "--threads", str(threads)],
                           marker, period=PERIOD, timeout=timeout)
    got = json.loads(run.stdout.strip().splitlines()[-1])
    peak = got.pop("cuda_peak_above_baseline", None)
    if peak is None:
        peak = run.peak("after", "driver_anon") - got["baseline_bytes"]
    return {"options": options, "plain": options_of(plain(cfg)),
            **{k: getattr(cfg, k) for k in APPLIED}, **got, "peak_above_baseline_bytes": peak,
            "others_cpu": run.others_cpu, "wall_seconds": run.wall_seconds}


def plain(cfg: TrainConfig) -> TrainConfig:
    """`cfg`'s plain step: without --micro-batch, --grad-checkpointing and --compile."""
    return replace(cfg, micro_batch=None, grad_checkpointing=False, compile=False)


def ratios(rows: list[dict]) -> None:
    """Each row's step time and peak memory against its plain step's row (`plain`; None when that was not
    measured)."""
    measured = {r["options"]: r for r in rows}
    for r in rows:
        base = measured.get(r["plain"])
        r["step_vs_plain"] = r["step_ms"] / base["step_ms"] if base else None
        r["peak_vs_plain"] = r["peak_above_baseline_bytes"] / base["peak_above_baseline_bytes"] if base else None


def table(rows: list[dict]) -> str:
    def ratio(x: float | None) -> str:
        return "" if x is None else f"{x:.2f}"

    lines = ["| options | --micro-batch | step ms | x plain | forward (pass 1) ms | backward (pass 2) ms "
             "| peak MiB above set-up | x plain |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['options']}` | {r['micro_batch'] or 'none'} | {r['step_ms']:.0f} | "
                     f"{ratio(r['step_vs_plain'])} | "
                     f"{r['forward_ms']:.0f} | {r['backward_ms']:.0f} | {r['peak_above_baseline_bytes'] / 2**20:.0f} "
                     f"| {ratio(r['peak_vs_plain'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", help="xclr-train options of one configuration (repeatable)")
    ap.add_argument("--halvings", type=int, default=2,
                    help="also --micro-batch B, B/2, ... B/2^halvings; -1: no chunked configurations")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (one: steady on a shared "
                    "machine, where others' load stalls a multi-threaded step)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--marker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.child is not None:
        if device.type == "cpu":
            torch.set_num_threads(args.threads)
        return child(args.child, args.marker, device, args.warmup, args.steps)
    configs = [c for options in args.config or DEFAULTS[args.device]
               for c in with_chunks(train_config(options), args.halvings)]
    started = time.perf_counter()
    rows = [measure(cfg, device, args.warmup, args.steps, args.threads) for cfg in configs]
    ratios(rows)
    result = {"device": args.device, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "cpus": psutil.cpu_count(), "threads": args.threads if args.device == "cpu" else None,
              "warmup": args.warmup, "steps": args.steps, "seconds": time.perf_counter() - started, "rows": rows}
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
