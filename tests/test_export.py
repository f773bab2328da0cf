"""`xclr-export`: each exported form, loaded without xclr (timm from the folder or from the file, torchvision's
ResNet, onnxruntime), gives xclr-eval's features on the same images; a damaged checkpoint is a one-line error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime
import pytest
import timm
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms as T
from train_helpers import train_in_process

from xclr_eval.cli import main as eval_command
from xclr_train.eval_features import decode
from xclr_train.evalsets import load_eval_set
from xclr_train.export import main as export_command

pytestmark = pytest.mark.slow  # whole commands end to end

def run_export(*args, check: bool = True):
    result = CliRunner().invoke(export_command, [*map(str, args)])
    if check and result.exit_code != 0:
        raise AssertionError(f"xclr-export failed:\n{result.output[-3000:]}") from result.exception
    return result


@pytest.fixture(scope="module", params=["vit", "torchvision"])
def exported(request, trained_run, stamps_third, tmp_path_factory):
    """(the export folder, xclr-eval's features of a third of the tuxpaint stamps (conftest.stamps_third), those
    images, the run) for the session's run of the backbone family (conftest.trained_run)."""
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    run = trained_run(request.param).dir
    data = str(stamps_third)
    run_export(run, "--out", root / "export", "--head", "--onnx")
    result = CliRunner().invoke(eval_command, [str(run / "checkpoints" / "latest.pt"), "--data", data, "--out",
                                               str(root / "eval"), "--no-clustering", "--no-linear-probe",
                                               "--save-features", str(root / "features.npz")])
    assert result.exit_code == 0, result.output[-3000:]
    images = [decode(x) for x in load_eval_set(data, None, "test", None, ("label",)).images]
    return root / "export", np.load(root / "features.npz")["features"], images, run


def preprocess(config: dict, images: list[Image.Image]) -> torch.Tensor:
    """What config.json says a user does to an image: shorter side to image_size, centre crop, normalise."""
    size = config["image_size"]
    transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(size),
                           T.ToTensor(), T.Normalize(config["mean"], config["std"])])
    return torch.stack([transform(image) for image in images])


def forms(folder, config: dict) -> dict[str, torch.nn.Module]:
    """The backbone loaded each documented way, none of them through xclr."""
    if config["library"] == "timm":
        from_file = timm.create_model(config["architecture"], pretrained=True,
                                      pretrained_cfg_overlay={"file": str(folder / "model.safetensors")},
                                      **config["model_args"])
        return {"timm local-dir": timm.create_model(f"local-dir:{folder}", pretrained=True),
                "timm file": from_file}
    net = getattr(torchvision.models, config["architecture"])()
    net.fc = torch.nn.Identity()
    if config["model_args"]["small_stem"]:
        net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = torch.nn.Identity()
    net.load_state_dict(load_file(folder / "model.safetensors"))
    return {"torchvision": net}


def test_every_exported_form_gives_xclr_evals_features(exported):
    folder, expected, images, _ = exported
    config = json.loads((folder / "config.json").read_text())
    assert config["feature_dim"] == expected.shape[1] and config["training"]["step"] == 4
    assert config["training"]["objective"] == "xclr" and config["training"]["options"]["arch"] in ("test_vit",
                                                                                                   "resnet18")
    batch = preprocess(config, images)
    assert len(batch) == len(expected) > 250
    for name, model in forms(folder, config).items():
        with torch.no_grad():
            got = model.eval()(batch).numpy()
        assert np.abs(got - expected).max() < 1e-5, name
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": batch.numpy()})[0]  # a batch size other than the export's
    assert np.abs(got - expected).max() < 1e-5, "onnx"
    head = load_file(folder / "head.safetensors")
    assert head["0.weight"].shape == (32, expected.shape[1]) and set(head) >= {"1.running_mean", "3.bias"}


def test_an_export_can_start_a_new_run(exported, tux_shards, tmp_path):
    """--init with an export's model.safetensors: at lr 0 the new run's backbone is the exported one; a resume no
    longer needs the file."""
    folder, _, _, _ = exported
    config = json.loads((folder / "config.json").read_text())
    options = config["training"]["options"]
    patch = ["--patch-size", str(options["patch_size"])] if options["patch_size"] else []
    init = tmp_path / "init.safetensors"
    shutil.copy(folder / "model.safetensors", init)
    args = ["--data", tux_shards, "--out", tmp_path / "run", "--arch", options["arch"], *patch, "--image-size", "32",
            "--proj-hidden", "32", "--batch-size", "16", "--steps", "1", "--samples-per-epoch", "16", "--workers",
            "0", "--no-progress", "--lr", "0", "--init", init]
    train_in_process(*args)
    state = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)["model"]
    for key, value in load_file(folder / "model.safetensors").items():
        if "running" not in key and "num_batches" not in key:  # BatchNorm statistics move even at lr 0
            assert torch.equal(state[f"backbone.{key}"], value), key
    init.unlink()  # a resumed run takes its weights from the checkpoint, not from --init
    train_in_process(*args, "--resume", "latest")


def test_a_damaged_checkpoint_is_a_one_line_error_and_writes_nothing(exported, tmp_path):
    _, _, _, run = exported
    checkpoint = run / "checkpoints" / "latest.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 1000)
    for bad, message in [(truncated, f"Error: {truncated} is not a readable xclr checkpoint"),
                         (garbage, f"Error: {garbage} is not a readable xclr checkpoint"),
                         (tmp_path, f"Error: no checkpoint at {tmp_path / 'checkpoints' / 'latest.pt'}")]:
        result = run_export(bad, "--out", tmp_path / "out", check=False)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(message), result.stderr
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
