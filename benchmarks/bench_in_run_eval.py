"""Cost of the in-run evaluation (`xclr-train --eval-data`, `xclr_train.in_run_eval`) against a training step of the
same run (absolute times on a shared machine are noisy; a ratio within one run much less so).

    flock /tmp/xclr-heavy.lock .venv/bin/python benchmarks/bench_in_run_eval.py --shards runs/dev/tux-shards \
        --eval-data runs/dev/tux-tars --out benchmarks/results/in_run_eval_cpu.json
    # on a GPU: add --device cuda --image-size 224 --batch-size 256 --arch resnet50

For each --arch, one real training run (`xclr_train.train.train`: X-CLR, --image-size, --batch-size, --steps steps,
--workers DataLoader workers, a metrics line every step) evaluating every --eval-every steps and at the end. Reported:
the median `step_time` of its training lines (the trainer's clock leaves the evaluations out), the median seconds of
an evaluation call (`eval/seconds`: the backbone over every decodable eval image in eval mode, and the kNN accuracy
on the training device) and their ratio (an evaluation costs that many training steps), the eval images per second,
and the one-time set-up (`load_eval_data`: read, decode, cut into uint8 views and split; timed alone, before the run).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from xclr_train.config import TrainConfig
from xclr_train.in_run_eval import load_eval_data
from xclr_train.preemption import Preemption
from xclr_train.train import train


def measure(args: argparse.Namespace, arch: str, out: Path) -> dict:
    """One run of `arch` (module docstring) and its figures."""
    t0 = time.perf_counter()
    data = load_eval_data(args.eval_data, None, args.image_size, torch.device(args.device))
    setup_s = time.perf_counter() - t0
    cfg = TrainConfig(data=args.shards, out=str(out), arch=arch, image_size=args.image_size,
                      batch_size=args.batch_size, steps=args.steps, workers=args.workers, device=args.device,
                      log_every=1, progress=False, eval_data=args.eval_data, eval_every=args.eval_every)
    with Preemption() as preemption:
        train(cfg, preemption)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step_time"] for line in lines if "loss" in line][1:]  # the first step warms up
    evals = [line["eval/seconds"] for line in lines if "eval/seconds" in line]
    step_s, eval_s = statistics.median(steps), statistics.median(evals)
    images = sum(len(v) for v in data.views)
    return {"arch": arch, "step_s": step_s, "eval_s": eval_s, "eval_over_step": eval_s / step_s,
            "eval_images": images, "eval_images_per_s": images / eval_s, "setup_s": setup_s,
            "eval_calls": len(evals), "steps_timed": len(steps),
            "eval_lines": [x for x in lines if "eval/seconds" in x]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="Training shards (xclr-prep graph).")
    parser.add_argument("--eval-data", required=True, help="A labelled eval set (any spec xclr-eval reads).")
    parser.add_argument("--arch", action="append", help="Backbones (default: convnet and resnet18).")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--eval-every", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="Results JSON.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(args, arch, Path(tmp) / arch) for arch in args.arch or ["convnet", "resnet18"]]
    for r in rows:
        print(f"{r['arch']}: step {r['step_s']:.3f} s, evaluation {r['eval_s']:.3f} s ({r['eval_over_step']:.2f} "
              f"steps; {r['eval_images']} images, {r['eval_images_per_s']:.0f}/s), set-up {r['setup_s']:.2f} s")
    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "options": {k: str(v) for k, v in vars(args).items()},
              "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
