"""open_clip's CLIP as the study's baseline: open_clip's own trainer (in .venv-openclip, scripts/setup_openclip.sh)
reads `xclr-prep graph` shards, and `xclr-eval` reads its checkpoint's image trunk (`xclr_eval.openclip`) with the
features open_clip's own model computes; a damaged, foreign or unsupported open_clip run is a one-line EvalError."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from xclr_eval.cli import main as eval_command
from xclr_eval.errors import EvalError
from xclr_eval.features import load_encoder
from xclr_eval.openclip import CONFIG, OpenClipTrunk
from xclr_train.augment import MEAN, STD
from xclr_train.eval_features import decode
from xclr_train.evalsets import load_eval_set
from xclr_train.models import ModelConfig, build_backbone

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from openclip_clip import MODEL, VENV, budget, train_openclip  # noqa: E402

# open_clip's own image features of the PNG files in a folder (sorted by name): its model from the run's config and
# the checkpoint, its own evaluation transform, the image tower's trunk (the features before its projection).
OPEN_CLIP_FEATURES = """
import sys
from pathlib import Path
import numpy as np, torch, open_clip
from PIL import Image
from open_clip.factory import load_checkpoint
run, checkpoint, folder, out = sys.argv[1:]
model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{run}")
load_checkpoint(model, checkpoint)
batch = torch.stack([preprocess(Image.open(p)) for p in sorted(Path(folder).glob("*.png"))])
with torch.no_grad():
    np.save(out, model.eval().visual.trunk(batch).numpy())
"""


def fake_run(root: Path, config: dict | None = None, drop: int = 0) -> tuple[Path, torch.nn.Module]:
    """An open_clip run directory as its trainer writes one (RUN/open_clip_config.json, RUN/checkpoints/epoch_1.pt
    with a DDP-prefixed state_dict of the CLIP), its image trunk random; `drop` trunk weights left out."""
    root.mkdir()
    config = config or json.loads(MODEL.read_text())
    (root / CONFIG).write_text(json.dumps(config))
    trunk, _ = build_backbone(ModelConfig("timm:test_resnet", 32, 0, 0))
    weights = {f"module.visual.trunk.{k}": v for k, v in list(trunk.state_dict().items())[drop:]}
    checkpoint = root / "checkpoints" / "epoch_1.pt"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 1, "name": root.name, "optimizer": {},
                "state_dict": {**weights, "module.logit_scale": torch.tensor(2.0)}}, checkpoint)
    return checkpoint, trunk.eval()


def refusal(path: Path) -> str:
    with pytest.raises(EvalError) as caught:
        load_encoder(path)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_an_open_clip_run_is_read_by_its_config_and_anything_else_refused_in_one_line(tmp_path):
    checkpoint, trunk = fake_run(tmp_path / "run")
    model, info = load_encoder(checkpoint)
    assert isinstance(model, OpenClipTrunk) and model.feature_dim == 96
    assert info["config"]["loss"] == "open_clip" and info["config"]["image_size"] == 32 and info["epoch"] == 1
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.features(x), trunk(x))  # the study's config normalises as xclr does

    other = {**json.loads(MODEL.read_text()), "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    checkpoint_other, trunk_other = fake_run(tmp_path / "other-mean", other)
    raw = x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]  # what x normalises
    with torch.no_grad():
        assert torch.allclose(load_encoder(checkpoint_other)[0].features(x), trunk_other((raw - 0.5) / 0.25),
                              atol=1e-5)

    assert "1 of its weights missing ['conv1.0.weight']" in refusal(fake_run(tmp_path / "short", drop=1)[0])
    cut = tmp_path / "cut" / "checkpoints" / "epoch_1.pt"
    shutil.copytree(tmp_path / "run", tmp_path / "cut")
    cut.write_bytes(cut.read_bytes()[:5000])
    assert "not a readable open_clip checkpoint" in refusal(cut)
    foreign = tmp_path / "run" / "checkpoints" / "foreign.pt"
    torch.save({"model": {}, "epoch": 1}, foreign)
    assert "no state_dict with visual.trunk.* weights" in refusal(foreign)
    pooled = json.loads(MODEL.read_text())
    pooled["model_cfg"]["vision_cfg"]["timm_pool"] = "abs_attn"
    assert "pools after the trunk" in refusal(fake_run(tmp_path / "attention-pool", pooled)[0])
    (tmp_path / "run" / CONFIG).write_text("{")
    assert "is not an open_clip model config" in refusal(checkpoint)


def test_a_step_budget_is_whole_epochs_of_about_one_pass():
    plan = budget(600, 7572, 128)
    assert (plan.epochs, plan.batches, plan.steps) == (10, 60, 600)
    assert budget(7, 10_000, 128).steps == 7 and budget(5, 100, 128).epochs == 5
    assert budget(600, 7572, 256).epochs == 20  # twice the samples a step: twice the passes


@pytest.mark.slow
def test_open_clip_trains_on_xclr_shards_and_xclr_eval_reads_its_image_trunk(tux_shards, tux_embed, tmp_path):
    """open_clip's trainer, a few steps on the tuxpaint shards; xclr-eval's features of its checkpoint are those of
    open_clip's own model and transform on the same images."""
    assert (VENV / "bin" / "python").exists(), f"{VENV} is missing: scripts/setup_openclip.sh makes it " \
                                               "(scripts/run_tests.sh runs it)"
    checkpoint = train_openclip(tux_shards, tmp_path / "run", steps=3, lr=5e-4, seed=0, batch=128)
    done = json.loads((tmp_path / "run" / "done.json").read_text())
    assert done["steps"] == 3 and done["samples"] > 700 and checkpoint.exists()
    npz = tmp_path / "features.npz"
    tars = str(tux_embed / "tars")
    result = CliRunner().invoke(eval_command, [str(checkpoint), "--data", tars, "--out", str(tmp_path / "ev"),
                                               "--no-clustering", "--no-linear-probe", "--save-features",
                                               str(npz)])
    assert result.exit_code == 0, result.output[-3000:]
    run = json.loads((tmp_path / "ev" / "results.json").read_text())["runs"]["run"]
    assert run["loss"] == "open_clip" and run["epoch"] == done["epochs"]
    assert 0 <= run["metrics"]["knn_accuracy"] <= 1 and np.isfinite(list(run["metrics"].values())).all()
    expected = np.load(npz)["features"]

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(load_eval_set(tars, None, "test", None, ("label",)).images):
        decode(image).save(folder / f"{i:05d}.png")  # RGB as xclr-eval decodes it, lossless
    subprocess.run([str(VENV / "bin" / "python"), "-c", OPEN_CLIP_FEATURES, str(tmp_path / "run"), str(checkpoint),
                    str(folder), str(tmp_path / "open_clip.npy")], check=True, capture_output=True)
    got = np.load(tmp_path / "open_clip.npy")
    assert got.shape == expected.shape and len(got) > 700
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()
