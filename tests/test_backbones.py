"""Backbones named by a string (torchvision, convnet, any timm model), their families and recipes, and the pooled
features evaluation uses."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from xclr_train.models import Encoder, ModelConfig, ModelError, build_backbone, family, timm_name
from xclr_train.optim import FAMILY_RECIPES, PLAIN, Settings, param_groups, resolve

VIT = ModelConfig("test_vit", 32, 16, 8, patch_size=8)


def test_names_pick_the_library():
    assert timm_name("resnet50") is None and timm_name("convnet") is None
    assert timm_name("timm:resnet50") == "resnet50" and timm_name("vit_small_patch16_224") == "vit_small_patch16_224"
    tv, _ = build_backbone(ModelConfig("resnet18", 32, 16, 8))
    tm, _ = build_backbone(ModelConfig("timm:resnet18", 32, 16, 8))
    assert type(tv).__module__.startswith("torchvision") and type(tm).__module__.startswith("timm")


def test_a_vit_is_built_for_the_image_and_patch_size():
    net, dim = build_backbone(VIT)
    assert dim == net.num_features == 64
    assert net.patch_embed.num_patches == 16  # (32 / 8)^2
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 64)


@pytest.mark.parametrize("config, message", [
    (ModelConfig("no_such_model", 32, 16, 8), "unknown --arch 'no_such_model'"),
    (ModelConfig("resnet18", 32, 16, 8, patch_size=4), "--patch-size: resnet18 has no patches"),
    (ModelConfig("timm:resnet18", 32, 16, 8, patch_size=4), "--patch-size: timm's resnet18 has no patches"),
])
def test_what_cannot_make_a_backbone_is_a_one_line_error(config, message):
    with pytest.raises(ModelError) as err:
        build_backbone(config)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_init_loads_weights_and_refuses_what_does_not_fit(tmp_path):
    for config in (VIT, ModelConfig("resnet18", 32, 16, 8)):
        source, _ = build_backbone(config)
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
        torch.manual_seed(1)  # another random init, which --init must replace
        loaded, _ = build_backbone(config, init=tmp_path / "w.safetensors")
        for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    for config, init in [(VIT, tmp_path / "w.safetensors"), (ModelConfig("resnet18", 32, 16, 8), tmp_path / "nope"),
                         (VIT, tmp_path / "nope")]:
        with pytest.raises(ModelError) as err:
            build_backbone(config, init=init)
        assert str(err.value).startswith(("--init", "cannot read weights")) and "\n" not in str(err.value), err.value
    big_stem, _ = build_backbone(ModelConfig("resnet18", 224, 16, 8))  # a 7x7 stem where 32 px has a 3x3 one
    torch.save(big_stem.state_dict(), tmp_path / "r224.pt")
    with pytest.raises(ModelError, match=r"does not fit resnet18: size mismatch for conv1.weight"):
        build_backbone(ModelConfig("resnet18", 32, 16, 8), init=tmp_path / "r224.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights from"):
        build_backbone(ModelConfig("convnet", 32, 16, 8), init=tmp_path / "bad.pt")


def test_features_are_timms_pre_logits():
    """The backbone's output is forward_head(pre_logits=True) of the same timm model with a classifier: the cls
    token for a ViT, the average pool for a ResNet."""
    for name, kwargs in [("test_vit", {"img_size": 32, "patch_size": 8}), ("resnet18", {})]:
        encoder = Encoder(ModelConfig(name if name != "resnet18" else "timm:resnet18", 32, 16, 8,
                                      kwargs.get("patch_size"))).eval()
        full = timm.create_model(name, num_classes=10, **kwargs).eval()
        missing, _ = full.load_state_dict(encoder.backbone.state_dict(), strict=False)
        assert all(k.startswith(("head.", "fc.")) for k in missing), missing
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            expected = full.forward_head(full.forward_features(x), pre_logits=True)
            torch.testing.assert_close(encoder.features(x), expected)


def test_family_follows_the_norm_layers():
    assert family(build_backbone(VIT)[0]) == "layernorm"
    assert family(build_backbone(ModelConfig("convnext_atto", 32, 16, 8))[0]) == "layernorm"
    for arch in ("convnet", "resnet18", "timm:resnet18"):
        assert family(build_backbone(ModelConfig(arch, 32, 16, 8))[0]) == "batchnorm"


def test_recipes_resolve_by_family_and_options_win():
    assert resolve("batchnorm", 512, None, None, None, None) == Settings("lars", 0.6, 1e-6, 0.0)
    vit = FAMILY_RECIPES["layernorm"]
    assert resolve("layernorm", 512, None, None, None, None) == Settings("adamw", vit.lr * 2, 0.1, 3.0)
    # the other optimizer takes its plain lr and weight decay; clipping stays the family's
    assert resolve("layernorm", 256, "lars", None, None, None) == Settings("lars", PLAIN["lars"].lr, 1e-6, 3.0)
    assert resolve("batchnorm", 256, "adamw", None, None, None) == Settings("adamw", PLAIN["adamw"].lr, 1e-6, 0.0)
    assert resolve("layernorm", 256, None, 0.0, 0.05, 0.0) == Settings("adamw", 0.0, 0.05, 0.0)


def test_position_embedding_cls_token_norms_and_biases_do_not_decay():
    encoder = Encoder(VIT)
    decay, plain = param_groups(encoder, 0.1)
    names = {id(p): n for n, p in encoder.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"backbone.pos_embed", "backbone.cls_token", "backbone.norm.weight", "backbone.blocks.0.attn.qkv.bias",
            "head.1.weight"} <= plain_names
    assert {"backbone.patch_embed.proj.weight", "backbone.blocks.0.attn.qkv.weight", "head.0.weight"} <= decay_names
    assert all(p.ndim > 1 for p in decay["params"]) and plain["weight_decay"] == 0 and decay["weight_decay"] == 0.1
    assert len(plain_names) + len(decay_names) == len(names)
