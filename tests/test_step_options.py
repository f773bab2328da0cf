"""--grad-checkpointing and --compile: the trainer's steps with either give the plain steps' losses, gradients,
weights and BatchNorm statistics; a compiled run's checkpoints keep the plain keys, resume and export; a backend
that cannot run and a backbone without gradient checkpointing are one-line errors before any step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch._dynamo.utils import counters
from train_helpers import train_in_process
from train_helpers import train_metrics as metrics

from xclr_train.augment import RECIPES, draw_photometric, step_generator
from xclr_train.export import main as export_command
from xclr_train.models import Encoder, ModelConfig, ModelError, family
from xclr_train.objectives import Graph, make_objective
from xclr_train.optim import make_optimizer, resolve
from xclr_train.recompute import recompute_in_backward
from xclr_train.step import Stepper

CPU = torch.device("cpu")
# a torchvision ResNet (small stem), a timm ViT, the convnet, and a timm BatchNorm net (timm's own checkpointing)
BACKBONES = [("resnet18", None), ("test_vit", 4), ("convnet", None), ("test_resnet", None)]


@dataclass(frozen=True)
class Steps:
    """What `train_steps` saw: each step's loss and gradients, the learner's state after the last step, and how
    many forwards of the backbone's leaf modules ran in all (a recomputation runs some twice)."""
    losses: list[float]
    grads: list[dict[str, torch.Tensor]]
    state: dict[str, torch.Tensor]
    forwards: int


def train_steps(arch: str, patch: int | None, grad_checkpointing: bool, steps: int = 3, b: int = 2,
                size: int = 16) -> Steps:
    """`steps` steps of the trainer's own step (SimCLR, the family's optimizer) on random crops, from seed 0, with
    the learner built as `xclr_train.train.set_up` builds it."""
    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(arch, size, 32, 16, patch))
    objective = make_objective("simclr", {}, Graph())
    learner = objective.build(encoder, 16, 32, None, 0, CPU, 1)
    if grad_checkpointing:
        recompute_in_backward(encoder)
    forwards = [0]
    for module in (m for m in encoder.backbone.modules() if not any(m.children())):
        module.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    recipe = resolve(family(encoder.backbone), b, None, None, None, None)
    stepper = Stepper(objective, learner, make_optimizer(recipe.optimizer, learner, recipe.lr, recipe.weight_decay),
                      torch.amp.GradScaler("cuda", enabled=False), nullcontext(), RECIPES["simclr"], recipe.clip_grad,
                      0)
    crops = torch.Generator().manual_seed(1)
    losses, grads = [], []
    for step in range(steps):
        images = torch.randint(0, 256, (2 * b, 3, size, size), dtype=torch.uint8, generator=crops)
        params = draw_photometric(2 * b, RECIPES["simclr"], step_generator(0, 0, step))
        loss, _ = stepper.step(images, params, {"caption_id": torch.arange(b)}, recipe.lr, step, steps)
        losses.append(loss.item())
        grads.append({name: p.grad.clone() for name, p in learner.named_parameters() if p.grad is not None})
    return Steps(losses, grads, {k: v.clone() for k, v in learner.state_dict().items()}, forwards[0])


@pytest.mark.parametrize(("arch", "patch"), BACKBONES, ids=[arch for arch, _ in BACKBONES])
def test_grad_checkpointing_gives_the_plain_steps(arch, patch):
    """Three steps with and without --grad-checkpointing: the same losses, gradients and weights, and the same
    BatchNorm running statistics and batch counts, though the backbone recomputed part of its forward."""
    plain, checkpointed = (train_steps(arch, patch, on) for on in (False, True))
    assert checkpointed.forwards > plain.forwards  # recomputed in the backward pass
    torch.testing.assert_close(checkpointed.losses, plain.losses)
    for ours, theirs in zip(checkpointed.grads, plain.grads):
        assert ours.keys() == theirs.keys()
        torch.testing.assert_close(ours, theirs)
    assert checkpointed.state.keys() == plain.state.keys()  # the same names: checkpoints and exports load alike
    torch.testing.assert_close(checkpointed.state, plain.state)


def test_a_timm_model_without_gradient_checkpointing_is_a_one_line_error():
    encoder = Encoder(ModelConfig("cs3darknet_s", 16, 32, 16))
    with pytest.raises(ModelError) as error:
        recompute_in_backward(encoder)
    assert str(error.value) == "--grad-checkpointing: timm's cs3darknet_s has no gradient checkpointing"


# test_vit: inductor computes a BatchNorm's batch statistics in float32 where torch's CPU kernel accumulates them in
# wider precision, and an untrained convnet's ill-conditioned gradients magnify that beyond float rounding at these
# sizes; a LayerNorm backbone's compiled and eager steps agree to rounding
COMPILED = ("--arch", "test_vit", "--patch-size", "4", "--image-size", "16", "--proj-hidden", "32", "--proj-dim", "16",
            "--batch-size", "4", "--steps", "2", "--samples-per-epoch", "4", "--workers", "0", "--log-every", "1",
            "--no-progress")


def checkpoint(run, name: str = "latest.pt") -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=True)


def key_tree(state: dict) -> dict:
    """The nested keys of a checkpoint (optimizer state by parameter index), without the values."""
    return {k: key_tree(v) if isinstance(v, dict) else None for k, v in state.items()}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="inductor needs a C++ compiler on the CPU (the next test checks the error without one)")
def test_a_compiled_run_gives_the_plain_run_and_its_checkpoints_resume_and_export(tux_shards, tmp_path):
    """Two epochs of one step with and without --compile: the same losses and weights to float rounding, and
    checkpoints with the same keys; resumed from epoch 1 (compiled again) it ends where it did; its export holds
    the plain run's weight names."""
    plain, compiled, resumed = tmp_path / "plain", tmp_path / "compiled", tmp_path / "resumed"
    train_in_process("--data", tux_shards, "--out", plain, *COMPILED)
    graphs = counters["stats"]["unique_graphs"]
    train_in_process("--data", tux_shards, "--out", compiled, *COMPILED, "--compile")
    assert counters["stats"]["unique_graphs"] > graphs  # torch.compile traced the encoder
    assert [x["step"] for x in metrics(compiled)] == [1, 2]
    assert [x["loss"] for x in metrics(compiled)] == pytest.approx([x["loss"] for x in metrics(plain)], rel=1e-5)
    ours, theirs = checkpoint(compiled), checkpoint(plain)
    assert key_tree(ours) == key_tree(theirs)
    torch.testing.assert_close(ours["model"], theirs["model"], rtol=1e-4, atol=1e-5)

    shutil.copytree(compiled, resumed)
    train_in_process("--data", tux_shards, "--out", resumed, *COMPILED, "--compile", "--resume",
                     resumed / "checkpoints" / "epoch-0001.pt")
    torch.testing.assert_close(checkpoint(resumed)["model"], ours["model"], rtol=1e-6, atol=1e-7)

    for run in (plain, compiled):
        result = CliRunner().invoke(export_command, [str(run), "--out", str(run / "export")])
        assert result.exit_code == 0, result.output
    assert load_file(compiled / "export" / "model.safetensors").keys() == \
        load_file(plain / "export" / "model.safetensors").keys()


@pytest.mark.slow
def test_compile_without_a_working_backend_is_a_one_line_error(tux_shards, tmp_path):
    """A CPU without a C++ compiler for inductor ($CXX naming none): exit 2 with one "Error:" line giving torch's
    reason, before any step (no metrics, no checkpoint) and without a traceback."""
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "xclr_train", "--data", str(tux_shards), "--out", str(run),
                           *COMPILED, "--compile"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CXX": str(tmp_path / "no-such-compiler")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "Error: --compile: torch.compile cannot run on the cpu here (InvalidCxxCompiler: No working C++ compiler"), \
        proc.stderr[-3000:]
    assert str(tmp_path / "no-such-compiler") in errors[0]
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints" / "latest.pt").exists()
