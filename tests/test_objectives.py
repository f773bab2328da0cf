"""The objective registry: every objective's options are checked when it is made, an option of another objective is
refused by name, and a new objective is one class that the command line picks up with nothing else edited."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F
from ddp_step import M, global_batch
from train_helpers import takers

from xclr_train.data import Needs
from xclr_train.errors import TrainError
from xclr_train.losses.clip import clip_loss
from xclr_train.losses.xclr import xclr_loss
from xclr_train.objectives import OBJECTIVES, Graph, Options, Views, make_objective
from xclr_train.objectives.base import target_stats
from xclr_train.targets import floor_similarity, sparse_similarity

GRAPH = Graph(background=0.2, kth_mean=0.3)


def test_every_objective_registers_under_its_name_with_documented_options():
    """Each registered class is named by its --loss, defined in a module of its own, and its Args (the objective's
    own, checked with its name) give every option a help text; then the defaults of a few."""
    modules = [cls.__module__ for cls in OBJECTIVES.values()]
    assert len(set(modules)) == len(modules) and all(m.startswith("xclr_train.objectives.") for m in modules)
    for name, cls in OBJECTIVES.items():
        assert cls.name == name and cls.Args.loss == name and issubclass(cls.Args, Options)
        assert all(f.metadata["help"] for f in fields(cls.Args)), name
    defaults = {name: {f.name: f.default for f in fields(cls.Args)} for name, cls in OBJECTIVES.items()}
    assert defaults["moco"] == {"tau": 0.1, "queue_size": 65536, "momentum": 0.99}
    assert defaults["nnclr"] == {"tau": 0.1, "queue_size": 98304}
    assert defaults["byol"] == {"momentum": 0.996}
    assert defaults["triplet"] == {"positives": "caption", "margin": 0.2, "mining": "hardest"}
    assert defaults["contrastive"] == {"positives": "caption", "margin": 1.0}
    assert defaults["xclr"] == {"tau": 0.1, "tau_s": 0.1, "targets": "sparse", "calibrate": "none",
                                "floor": "background", "queue_size": 0}
    assert defaults["xclr-clip"] == defaults["xclr"] | {"text_weight": 1.0}


@pytest.mark.parametrize("loss, options, message", [
    ("simclr", {"tau": 0.0}, "--tau must be positive for --loss simclr, got 0.0"),
    ("clip", {"tau": -1.0}, "--tau must be positive for --loss clip"),
    ("xclr", {"tau_s": 0.0}, "--tau-s must be positive for --loss xclr"),
    ("xclr", {"queue_size": -1}, "--queue-size must be 0 or more for --loss xclr"),
    ("moco", {"queue_size": 0}, "--queue-size must be positive for --loss moco"),
    ("nnclr", {"queue_size": 0}, "--queue-size must be positive for --loss nnclr"),
    ("moco", {"momentum": 1.0}, "--momentum must be in [0, 1) for --loss moco"),
    ("byol", {"momentum": -0.1}, "--momentum must be in [0, 1) for --loss byol"),
    ("triplet", {"margin": 0.0}, "--margin must be positive for --loss triplet"),
    ("contrastive", {"margin": -1.0}, "--margin must be positive for --loss contrastive"),
    ("triplet", {"mining": "easy"}, "--mining must be one of hardest, semihard, got 'easy'"),
    ("supcon", {"positives": "class"}, "--positives must be one of caption, label, graph, got 'class'"),
    ("xclr", {"targets": "dense", "queue_size": 4}, "--queue-size with --loss xclr needs sparse targets"),
    ("xclr", {"floor": "none", "targets": "dense"}, "--floor none is for --loss xclr with sparse targets"),
    ("xclr-clip", {"text_weight": 0.0}, "--text-weight must be positive for --loss xclr-clip, got 0.0"),
    ("xclr-clip", {"floor": "none", "calibrate": "background"}, "--floor none is for --loss xclr-clip with sparse"),
    ("xclr", {"text_weight": 1.0}, f"--text-weight is for --loss {takers('text_weight')}, not xclr"),
    ("simclr", {"margin": 0.5}, f"--margin is for --loss {takers('margin')}, not simclr"),
    ("byol", {"tau": 0.2}, f"--tau is for --loss {takers('tau')}, not byol"),
    ("npair", {"mining": "hardest"}, f"--mining is for --loss {takers('mining')}, not npair"),
    ("hinge", {}, "unknown --loss 'hinge'"),
])
def test_a_bad_option_is_refused_when_the_objective_is_made(loss, options, message):
    with pytest.raises(TrainError) as error:
        make_objective(loss, options, GRAPH)
    assert message in str(error.value)


def test_xclr_takes_its_floor_from_the_graph():
    assert make_objective("xclr", {}, GRAPH).floor == floor_similarity(0.2, 0.3) == 0.2
    assert make_objective("xclr", {}, Graph(background=0.5, kth_mean=0.4)).floor == 0.4  # clipped at the k-th mean
    assert make_objective("xclr", {"floor": "none"}, GRAPH).floor == float("-inf")
    with pytest.raises(TrainError, match="needs the shards manifest"):
        make_objective("xclr", {}, Graph())


def test_needs_follow_the_options():
    def needs(loss, options):
        objective = make_objective(loss, options, GRAPH)
        return objective.needs, objective.needs_reason
    assert needs("xclr", {}) == (Needs(neighbors=True), "--loss xclr with sparse targets")
    assert needs("xclr", {"targets": "dense"}) == (Needs(embedding=True), "--targets dense")
    assert needs("clip", {}) == (Needs(embedding=True), "--loss clip")
    assert needs("xclr-clip", {}) == (Needs(neighbors=True, embedding=True), "--loss xclr-clip")
    assert needs("xclr-clip", {"targets": "dense"}) == (Needs(embedding=True), "--loss xclr-clip")
    assert make_objective("xclr-clip", {}, GRAPH).projection_dim(128, 384) == 384  # CLIP's term needs the caption size
    assert make_objective("xclr", {}, GRAPH).projection_dim(128, 384) == 128
    assert needs("triplet", {"positives": "graph"}) == (Needs(neighbors=True), "--positives graph")
    assert needs("supcon", {"positives": "label"}) == (Needs(labels=True), "--positives label")
    assert needs("npair", {})[0] == needs("simclr", {})[0] == needs("moco", {})[0] == Needs()


@pytest.mark.parametrize("targets", ["sparse", "dense"])
def test_xclr_clip_is_the_xclr_loss_plus_w_times_the_clip_loss(targets):
    """On one process, against the whole-batch losses (each tested against a float64 loop reference): the value, the
    logged text term and the gradients."""
    batch = global_batch()
    g = torch.Generator().manual_seed(3)
    z1, z2 = (torch.randn(M, 16, generator=g, requires_grad=True) for _ in range(2))
    objective = make_objective("xclr-clip", {"text_weight": 0.5, "tau_s": 0.2, "targets": targets}, GRAPH)
    loss, stats = objective.rows(Views(z1, z2), batch, 0)
    emb = batch["emb"]
    s = (sparse_similarity(batch["caption_id"], batch["nbr_id"], batch["nbr_sim"], objective.floor)
         if targets == "sparse" else F.normalize(emb, dim=1) @ F.normalize(emb, dim=1).T)
    text = clip_loss(z1, z2, emb, batch["caption_id"], tau=0.1)
    expected = xclr_loss(z1, z2, s, tau=0.1, tau_s=0.2) + 0.5 * text
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats["text_loss"], text.detach())
    got = torch.autograd.grad(loss, [z1, z2])
    for a, b in zip(got, torch.autograd.grad(expected, [z1, z2]), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("loss, options", [
    ("xclr", {}), ("xclr", {"floor": "none"}), ("xclr", {"calibrate": "background"}), ("xclr", {"targets": "dense"}),
    ("xclr-clip", {}),
])
def test_the_xclr_objective_sizes_follow_from_the_batch_size(loss, options):
    """Targets, loss, statistics and backward run on meta tensors (sizes, no values): nothing in X-CLR's objective
    has a size that depends on the data, so on a GPU no step of it waits for the host."""
    batch = {key: t.to("meta") for key, t in global_batch().items()}
    z1, z2 = (torch.empty(M, 16, device="meta", requires_grad=True) for _ in range(2))
    loss_value, stats = make_objective(loss, options, GRAPH).rows(Views(z1, z2), batch, 0)
    loss_value.backward()
    assert loss_value.shape == () and z1.grad.shape == (M, 16)
    assert {"target_entropy", "target_same_caption", "graph_hits"} <= set(stats)


def test_target_statistics_are_those_of_the_explicit_target_distribution():
    """Entropy and same-caption mass of t over an anchor's 2M - 1 other views and Q queue entries, listed one by
    one (float64 loop), against `target_stats` on rank 1 of a batch of M = 6 with a queue of 3."""
    g = torch.Generator().manual_seed(0)
    big_m, q, m = 6, 3, 2
    weights = torch.rand(m, big_m + q, generator=g, dtype=torch.float64) + 0.01
    own = torch.tensor([2, 3])
    column_ids = torch.tensor([5, 7, 5, 9, 7, 1, 5, 9, 2])
    stats = target_stats(weights, own, column_ids[own], column_ids, big_m)
    entropies, same = [], []
    for a in range(m):
        entries = [(weights[a, b].item(), column_ids[b].item()) for b in range(big_m) for _ in range(2)]
        entries.remove((weights[a, own[a]].item(), column_ids[own[a]].item()))  # the anchor's own view
        entries += [(weights[a, big_m + j].item(), column_ids[big_m + j].item()) for j in range(q)]
        z = sum(w for w, _ in entries)
        entropies.append(-sum(w / z * math.log(w / z) for w, _ in entries))
        same.append(sum(w / z for w, c in entries if c == column_ids[own[a]].item()))
    torch.testing.assert_close(stats["target_entropy"].item(), sum(entropies) / m, rtol=1e-12, atol=0)
    torch.testing.assert_close(stats["target_same_caption"].item(), sum(same) / m, rtol=1e-12, atol=0)


def test_a_new_objective_is_one_class(tmp_path):
    """Defined before the command line is built (as a module of the package would be), an objective gets --loss, its
    option with help and default, its checks and its one-line errors, with no other file edited."""
    script = textwrap.dedent('''
        from dataclasses import dataclass
        from xclr_train.objectives.base import Objective, Options, Views
        from xclr_schemas.options import POSITIVE, option
        from xclr_train.losses.simclr import nt_xent_rows

        class Scaled(Objective):
            name = "scaled"

            @dataclass(frozen=True)
            class Args(Options):
                scale: float = option(2.0, "Logit scale of the scaled test objective.", rule=POSITIVE)

            def rows(self, views, batch, rank):
                c = self.columns(views, batch, rank)
                return nt_xent_rows(c.anchors, c.columns, c.self_cols, 1 / self.args.scale), {}

        from click.testing import CliRunner
        from xclr_train.cli import main
        help = CliRunner().invoke(main, ["--help"], terminal_width=200).output
        assert "scaled" in help.split("--loss", 1)[1].split("\\n")[0], help
        assert "Logit scale of the scaled test objective. For --loss scaled; default 2.0." in " ".join(help.split())
        bad = CliRunner().invoke(main, ["--data", ".", "--out", "run", "--loss", "scaled", "--scale", "0"])
        assert bad.exit_code == 2, bad.output
        assert "Error: --scale must be positive for --loss scaled, got 0.0" in bad.stderr, bad.output
        other = CliRunner().invoke(main, ["--data", ".", "--out", "run", "--loss", "simclr", "--scale", "3"])
        assert "Error: --scale is for --loss scaled, not simclr" in other.stderr, other.output
        print("ok")
    ''')
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
