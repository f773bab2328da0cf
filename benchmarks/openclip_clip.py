"""open_clip's CLIP, trained by open_clip's own trainer on xclr's shards: the CLIP baseline the X-CLR paper names
(an image tower and a text tower trained together), beside the study's `clip` objective (the image tower against a
frozen caption embedding).

The model is benchmarks/openclip/open_clip_config.json: timm's test_resnet at 32 px as the image tower (the size of
the study's convnet), a small text transformer over open_clip's own tokenizer (its BPE vocabulary ships in the
wheel), open_clip's preprocessing at 32 px with the mean and std of xclr's augmentations. The trainer is
`python -m open_clip_train.main` in .venv-openclip (scripts/setup_openclip.sh: open_clip pins a webdataset that
xclr's environment cannot have), reading a complete `xclr-prep graph` shards directory as img2dataset-style
WebDataset tars (KEY.png, KEY.txt; the other members are left alone) on the CPU in fp32, with the study's optimizer
(AdamW, cosine, xclr-train's linear warm-up; `train_openclip`), open_clip's own loss and learned temperature, and as
much of xclr's SimCLR augmentation as open_clip's options take (AUGMENTATION: the crop scale, colour jitter and
grayscale; open_clip has no flip and no blur).

A step budget is expressed as open_clip epochs (`budget`). The run is cached and resumable as study.train's are: a
run with done.json is skipped, and an unfinished one resumes from its last epoch's checkpoint (open_clip's
`--resume latest`). OUT holds:

    open_clip_config.json  the model (a copy; open_clip reads it as --model local-dir:OUT, xclr-eval finds it there)
    out.log, params.txt    open_clip's log and options
    checkpoints/epoch_N.pt the last epoch's checkpoint (open_clip deletes the one before)
    checkpoints/latest.pt  the final checkpoint (a hard link), once done: what `xclr-eval` reads, as of xclr's runs
    done.json              wall_s (the trainer's whole run), steps, epochs, batches_per_epoch, samples, batch_size

    .venv/bin/python benchmarks/openclip_clip.py SHARDS --out OUT --steps 600 --lr 5e-4 --seed 0 [--batch 128]
    .venv/bin/xclr-eval OUT/checkpoints/latest.pt --data DATABASE --queries HELD_OUT ... --out EVAL
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import study_plan

from xclr_eval.openclip import CONFIG
from xclr_schemas.atomic import write_json_atomic
from xclr_schemas.names import CHECKPOINTS, LATEST, SIZES
from xclr_schemas.shards import ShardsDirError, read_shards_manifest
from xclr_train.augment import RECIPES
from xclr_train.optim import PLAIN, default_warmup

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-openclip"
MODEL = Path(__file__).resolve().parent / "openclip" / CONFIG
WEIGHT_DECAY = PLAIN["adamw"].weight_decay  # the study's AdamW (its convnet runs take --optimizer adamw)
_SIMCLR = RECIPES["simclr"]
AUGMENTATION = [f"scale={_SIMCLR.scale}", f"color_jitter={_SIMCLR.jitter}", f"color_jitter_prob={_SIMCLR.jitter_p}",
                f"gray_scale_prob={_SIMCLR.gray_p}"]  # open_clip's --aug-cfg, from xclr's simclr recipe


class OpenClipError(Exception):
    """A run that cannot start or that open_clip's trainer ended with an error (one line, for the user)."""


@dataclass(frozen=True)
class Budget:
    """A step budget as open_clip runs it: `epochs` epochs of `batches` batches each (--train-num-samples =
    batches x batch size; open_clip's loader starts the next pass over the shards to fill an epoch)."""

    epochs: int
    batches: int

    @property
    def steps(self) -> int:
        return self.epochs * self.batches


def budget(steps: int, samples: int, batch_size: int) -> Budget:
    """epochs x batches = `steps` exactly, epochs the divisor of `steps` nearest to the passes over `samples` that
    the steps make (steps x batch_size / samples; the smaller of two as near), so that an epoch is about one pass."""
    passes = steps * batch_size / samples
    epochs = min((d for d in range(1, steps + 1) if steps % d == 0), key=lambda d: (abs(d - passes), d))
    return Budget(epochs, steps // epochs)


def shard_pattern(shards: Path) -> tuple[str, int]:
    """(the brace pattern of a complete shards directory's tars, as open_clip's --train-data takes it, their sample
    count from sizes.json); OpenClipError for a directory that `xclr-prep graph` has not completed."""
    try:
        read_shards_manifest(shards)
    except ShardsDirError as exc:
        raise OpenClipError(str(exc)) from None
    sizes = json.loads((shards / SIZES).read_text())
    names = sorted(sizes)
    pattern = names[0] if len(names) == 1 else "{" + ",".join(names) + "}"
    return f"{shards.resolve()}/{pattern}", sum(sizes.values())


def train_openclip(shards: Path, out: Path, steps: int, lr: float, seed: int, batch: int) -> Path:
    """Train open_clip's CLIP (the module docstring) for `steps` steps of `batch` samples at peak learning rate `lr`
    (xclr-train's default warm-up, then cosine to 0) and return OUT/checkpoints/latest.pt; a finished run
    (OUT/done.json) is returned as it is."""
    final = out / CHECKPOINTS / LATEST
    if (out / study_plan.RUN_DONE).exists():
        return final
    python = VENV / "bin" / "python"
    if steps < 1:
        raise OpenClipError(f"--steps {steps}: at least 1")
    if not python.exists():
        raise OpenClipError(f"{VENV} is missing: run scripts/setup_openclip.sh")
    pattern, samples = shard_pattern(shards)
    plan = budget(steps, samples, batch)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL, out / CONFIG)
    args = ["--train-data", pattern, "--train-num-samples", str(plan.batches * batch), "--dataset-type",
            "webdataset", "--model", f"local-dir:{out.resolve()}", "--device", "cpu", "--precision", "fp32",
            "--batch-size", str(batch), "--epochs", str(plan.epochs), "--lr", f"{lr:g}", "--wd", f"{WEIGHT_DECAY:g}",
            "--warmup", str(default_warmup(steps)), "--seed", str(seed), "--aug-cfg", *AUGMENTATION,
            "--workers", "1", "--logs", str(out.resolve().parent), "--name", out.name, "--save-frequency", "1",
            "--delete-previous-checkpoint", "--resume", "latest", "--report-to", "none", "--log-every-n-steps", "10"]
    start = time.perf_counter()
    run = subprocess.run([str(python), "-m", "open_clip_train.main", *args], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    last = out / CHECKPOINTS / f"epoch_{plan.epochs}.pt"
    if run.returncode != 0 or not last.exists():
        raise OpenClipError(f"open_clip's trainer ended with status {run.returncode} without {last}: see "
                            f"{out / 'out.log'}")
    final.unlink(missing_ok=True)
    os.link(last, final)
    write_json_atomic(out / study_plan.RUN_DONE, {"wall_s": wall, "steps": plan.steps, "epochs": plan.epochs,
                                                  "batches_per_epoch": plan.batches, "samples": samples,
                                                  "batch_size": batch})
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", type=Path, help="A complete `xclr-prep graph` shards directory.")
    parser.add_argument("--out", type=Path, required=True, help="The run directory (a rerun resumes or skips it).")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=5e-4, help="Peak learning rate.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128, help="Samples per step (the emoji study's batch).")
    opts = parser.parse_args()
    try:
        print(train_openclip(opts.shards, opts.out, opts.steps, opts.lr, opts.seed, opts.batch))
    except OpenClipError as exc:
        parser.exit(2, f"openclip_clip.py: error: {exc}\n")


if __name__ == "__main__":
    main()
