"""`xclr-train` with timm backbones on the real tuxpaint shards: a small ViT and timm's ResNet-18 under each
objective family, their recipes in config.json, exact resume, refusal of another architecture, --init, TensorBoard."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import save_file
from train_helpers import train_in_process
from train_helpers import train_metrics as metrics

from xclr_train.models import ModelConfig, build_backbone

pytestmark = pytest.mark.slow  # whole commands end to end

VIT = ["--arch", "test_vit", "--patch-size", "8"]
TIMM_RESNET = ["--arch", "timm:resnet18"]
SMALL = ["--image-size", "32", "--proj-hidden", "32", "--proj-dim", "16", "--batch-size", "16", "--workers", "1",
         "--log-every", "1", "--no-progress"]


def backbone_state(run) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["model"]
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


@pytest.mark.parametrize("backbone", [VIT, TIMM_RESNET], ids=["vit", "timm-resnet"])
@pytest.mark.parametrize("loss", [["--loss", "xclr"], ["--loss", "triplet", "--positives", "graph"],
                                  ["--loss", "byol"]], ids=["soft-target", "pair", "momentum-framework"])
def test_timm_backbones_train_under_every_objective_family(tux_shards, tmp_path, backbone, loss):
    """A few steps of each objective family: finite losses, the backbone's weights moved, the family's recipe in
    config.json (ViT: AdamW with weight decay 0.1 and clipping, whose gradient norm is logged; ResNet: LARS)."""
    run = tmp_path / "run"
    train_in_process("--data", tux_shards, "--out", run, *backbone, *SMALL, *loss, "--steps", "3",
                     "--samples-per-epoch", "48", "--lr", "0.01")
    lines = metrics(run)
    assert [x["step"] for x in lines] == [1, 2, 3] and all(math.isfinite(x["loss"]) for x in lines)
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == backbone[1] and config["lr"] == 0.01
    if backbone is VIT:
        assert (config["optimizer"], config["weight_decay"], config["clip_grad"], config["patch_size"]) == (
            "adamw", 0.1, 3.0, 8)
        assert all(x["grad_norm"] > 0 for x in lines)
    else:
        assert (config["optimizer"], config["weight_decay"], config["clip_grad"]) == ("lars", 1e-6, 0.0)
        assert "grad_norm" not in lines[0]
    moved = backbone_state(run)
    torch.manual_seed(0)  # the trainer's seed, set just before it builds the backbone: its initial weights
    initial = build_backbone(ModelConfig(backbone[1], 32, 32, 16, config["patch_size"]))[0].state_dict()
    weights = [k for k, v in initial.items() if v.is_floating_point() and "running" not in k]
    still = [k for k in weights if torch.equal(initial[k], moved[k])]
    # timm's ResNets start each block's last BatchNorm at 0, so a few scales before it move by less than a float
    # step in 3 steps; everything else must have trained
    assert len(still) <= 0.05 * len(weights), f"weights that did not train: {still}"
    assert list((run / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard events"


def test_clipping_bounds_the_update(tux_shards, tmp_path):
    """One AdamW step of the ViT from the same weights: clipped to a global norm of 1e-9, every gradient is far below
    AdamW's eps, so the weights move at least 10x less than with the recipe's clipping at 3."""
    moved = {}
    for clip in ("3", "1e-9"):
        run = tmp_path / f"clip-{clip}"
        train_in_process("--data", tux_shards, "--out", run, *VIT, *SMALL, "--steps", "1", "--samples-per-epoch",
                         "16", "--warmup-steps", "1", "--lr", "0.01", "--clip-grad", clip)
        assert json.loads((run / "config.json").read_text())["clip_grad"] == float(clip)
        torch.manual_seed(0)
        initial = build_backbone(ModelConfig("test_vit", 32, 32, 16, 8))[0].state_dict()
        moved[clip] = max((v - initial[k]).abs().max().item() for k, v in backbone_state(run).items())
    assert moved["1e-9"] < moved["3"] / 10, moved


def test_a_resumed_vit_run_repeats_the_uninterrupted_one(trained_run, tmp_path):
    """Resumed from its epoch-1 checkpoint, a ViT run's epoch 2 gives the same losses and weights, bit for bit."""
    whole = trained_run("vit")
    reference = [x["loss"] for x in metrics(whole.dir)]
    assert len(reference) == 4
    run = tmp_path / "resumed"
    shutil.copytree(whole.dir, run)
    shutil.copy(run / "checkpoints" / "epoch-0001.pt", run / "checkpoints" / "latest.pt")
    (run / "checkpoints" / "epoch-0002.pt").unlink()
    threads = torch.get_num_threads()
    torch.set_num_threads(whole.threads)
    try:
        train_in_process(*whole.args, "--out", run, "--resume", "latest")
    finally:
        torch.set_num_threads(threads)
    assert [x["loss"] for x in metrics(run)] == reference
    before, resumed = backbone_state(whole.dir), backbone_state(run)
    assert all(torch.equal(before[k], resumed[k]) for k in before)


def test_another_architecture_or_patch_size_is_refused(tux_shards, tmp_path):
    run = tmp_path / "run"
    args = ["--data", tux_shards, *SMALL, "--steps", "1", "--samples-per-epoch", "16"]
    train_in_process(*args, *VIT, "--out", run, "--lr", "0")
    # (with lr 0 the weights stay the seed's initial ones, which the test above rebuilds to see what moved)
    torch.manual_seed(0)
    initial = build_backbone(ModelConfig("test_vit", 32, 32, 16, 8))[0].state_dict()
    assert all(torch.equal(v, initial[k]) for k, v in backbone_state(run).items())
    checkpoint = run / "checkpoints" / "latest.pt"
    for other, diff in [(TIMM_RESNET, "arch=test_vit (this run: timm:resnet18), patch_size=8 (this run: None)"),
                        (["--arch", "test_vit", "--patch-size", "4"], "patch_size=8 (this run: 4)")]:
        refused = train_in_process(*args, *other, "--out", tmp_path / "other", "--resume", checkpoint, check=False)
        errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
        assert refused.exit_code == 2 and errors == [f"Error: {checkpoint} holds another model: {diff}"], \
            refused.stderr


def test_unknown_arch_and_bad_init_are_one_line_errors(tux_shards, tmp_path):
    args = ["--data", tux_shards, *SMALL, "--steps", "1", "--samples-per-epoch", "16", "--out", tmp_path / "run"]
    resnet, _ = build_backbone(ModelConfig("timm:resnet18", 32, 32, 16))
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, tmp_path / "resnet.safetensors")
    for extra, start in [(["--arch", "vit_nonexistent"], "Error: unknown --arch 'vit_nonexistent'"),
                         ([*VIT, "--init", tmp_path / "resnet.safetensors"],
                          f"Error: --init {tmp_path / 'resnet.safetensors'} does not fit test_vit: 78 of its weights "
                          "missing"),
                         ([*VIT, "--init", tmp_path / "missing.safetensors"], "Error: cannot read weights from"),
                         (["--arch", "resnet18", "--patch-size", "4"], "Error: --patch-size: resnet18 has no patches")]:
        result = train_in_process(*args, *extra, check=False)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(start), result.stderr
