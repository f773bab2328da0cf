"""What a training objective is, and the registry that finds one by its --loss name.

An objective is one subclass of `Objective` in its own module of this package, which `xclr_train.objectives`
imports at start-up. It owns:

  name          its --loss name; defining the class registers it
  Args          a frozen dataclass (`Options`) of its own options. Each field is the command-line option --field-name
                (`xclr_schemas.options.option()` gives its default, help, choices and valid range); `xclr-train`
                builds its options from the registry, so the help text is the field's. Values are checked when the
                dataclass is built, i.e. when the run is configured, not at the first step.
  needs         the sample members it reads beyond the images (`xclr_train.data.Needs`), and `needs_reason`, the
                options that ask for them (for the error when the shards lack them)
  extra state   a predictor head (`predictor = True`), learned scalars of the loss (`scalars`: parameters of the
                learner, so the optimizer trains them and DDP averages their gradients), a momentum target network
                (`momentum`, not None) and a queue (`make_queue`, `queue_entries`); `build` makes them, `after_step`
                moves them, `state_dict` saves them (the checkpoint's "method": "predictor", "scalars", "target",
                "queue")
  rows()        its loss for one rank's share of the global batch

One rank's loss: rank r holds m samples (global samples r*m .. r*m+m-1 of M = m * world) and their two views'
outputs (`Views`). Columns are the 2M projections gathered with gradient, views-major ([all view 1; all view 2]);
caption ids, labels, neighbour rows and caption embeddings are gathered without (`Objective.columns`), through
`gathers`, the process group's unless a benchmark stands in for the other ranks. The rank's loss is the
mean over its anchors; DDP's gradient averaging then gives the gradient of the global mean (`xclr_train.distributed`).
A queue is the same on every rank.

rows() also returns statistics, local means over the rank's samples, each a 0-d tensor:

  target_entropy        mean entropy of an anchor's target distribution over the 2M - 1 other views (and the
                        queue's entries)
  target_same_caption   mean target mass on views with the anchor's caption (its other view included)
  graph_hits            X-CLR: mean number of other samples b in the global batch with S[a, b] above the floor
                        (sparse) or the background similarity (dense), before calibration
  graph_hits_queue      X-CLR with a queue: the same count over the queue's entries
  positives             triplet, npair, contrastive: mean number of positive views per anchor
  text_loss             xclr-clip: the CLIP term of the loss, before its weight
  siglip_t, siglip_b    siglip: the current temperature exp(t') and bias b
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xclr_schemas.options import POSITIVE, Checked, flag, option
from xclr_train.data import Needs
from xclr_train.distributed import PROCESS_GROUP, Gathers
from xclr_train.errors import TrainError
from xclr_train.losses.soft import soft_contrastive
from xclr_train.models import Encoder, Learner, use_sync_batchnorm
from xclr_train.objectives.state import Queue, ema_update, momentum_at

OBJECTIVES: dict[str, type[Objective]] = {}  # --loss name -> class, filled as the modules are imported


def either(names: list[str]) -> str:
    """"a", "a or b", "a, b or c": the objectives that take an option, as errors and help list them."""
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


@dataclass(frozen=True)
class Options(Checked):
    """Base of every objective's Args: each field's choices and range are checked when it is built
    (`xclr_schemas.options.Checked`), a range error naming the objective, then `check()` (rules across fields)."""
    error = TrainError
    loss: ClassVar[str] = ""

    def scope(self) -> str:
        return f" for --loss {self.loss}"


@dataclass(frozen=True)
class TauArgs(Options):
    """The base of the Args of objectives whose loss is a softmax over the batch: its temperature --tau."""
    tau: float = option(0.1, "Temperature of the predicted distribution.", rule=POSITIVE)


@dataclass(frozen=True)
class Graph:
    """What the shards' manifest says about the caption graph (None without a manifest)."""
    background: float | None = None  # mean similarity of random caption pairs
    kth_mean: float | None = None  # mean similarity of a caption's k-th neighbour


@dataclass
class Views:
    """A rank's network outputs for its m samples, (m, d) each: online projections z, predictions p (with a
    predictor) and the momentum network's projections t (with a target network; no gradient)."""
    z1: Tensor
    z2: Tensor
    p1: Tensor | None = None
    p2: Tensor | None = None
    t1: Tensor | None = None
    t2: Tensor | None = None


@dataclass
class Columns:
    """One rank's anchors and the global batch's columns: anchors [z1; z2] (2m, d), columns (2M, d) gathered with
    gradient, each anchor's own column `self_cols` (2m,), the rank's global sample indices `own` (m,) and the
    global batch's caption ids (M,)."""
    anchors: Tensor
    columns: Tensor
    self_cols: Tensor
    own: Tensor
    caption_ids: Tensor

    @property
    def big_m(self) -> int:
        return len(self.caption_ids)


def target_stats(weights: Tensor, own: Tensor, row_ids: Tensor, column_ids: Tensor, big_m: int) -> dict[str, Tensor]:
    """Entropy and same-caption mass of t_i = w_{a, b(j)} / Z over the 2M - 1 other views and the queue's entries
    (equal for both views); `weights` (m, M + Q) and `column_ids` (M + Q,) list the M batch samples first."""
    def over_views(x: Tensor) -> Tensor:  # a batch sample has two views, a queue entry one
        return 2 * x[:, :big_m].sum(1) + x[:, big_m:].sum(1)

    with torch.no_grad():
        w_self = weights.gather(1, own[:, None]).squeeze(1)
        z = over_views(weights) - w_self
        wlogw = over_views(torch.special.xlogy(weights, weights)) - torch.special.xlogy(w_self, w_self)
        entropy = torch.log(z) - wlogw / z
        same = row_ids[:, None] == column_ids[None, :]
        same_mass = (over_views(torch.where(same, weights, 0.0)) - w_self) / z
    return {"target_entropy": entropy.mean(), "target_same_caption": same_mass.mean()}


class Objective:
    """One training objective (module docstring). Subclasses set `name` and `Args` and implement `rows`."""

    name: ClassVar[str]
    Args: ClassVar[type[Options]]
    predictor: ClassVar[bool] = False  # a predictor head Linear-BN-ReLU-Linear on the projections (--proj-hidden wide)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # a shared base such as PairObjective
        if "Args" not in cls.__dict__ or cls.name in OBJECTIVES:
            raise TypeError(f"objective {cls.name!r}: needs its own Args and a name no other objective has")
        cls.Args.loss = cls.name
        OBJECTIVES[cls.name] = cls

    def __init__(self, args: Options, graph: Graph, gathers: Gathers = PROCESS_GROUP) -> None:
        self.args = args
        self.gathers = gathers
        self.learner: Learner | None = None
        self.target: Encoder | None = None
        self.queue: Queue | None = None

    def columns(self, views: Views, batch: dict, rank: int, normalize: bool = True) -> Columns:
        """`Columns` of the online projections, unit-normalised unless `normalize` is False (N-pair)."""
        z1, z2 = views.z1.float(), views.z2.float()
        if normalize:
            z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        m = len(z1)
        own = rank * m + torch.arange(m, device=z1.device)
        cols = torch.cat([self.gathers.with_grad(z1), self.gathers.with_grad(z2)])
        big_m = len(cols) // 2
        return Columns(torch.cat([z1, z2]), cols, torch.cat([own, big_m + own]), own,
                       self.gathers.gather(batch["caption_id"]))

    def gathered_units(self, x: Tensor) -> Tensor:
        """The global batch's rows of x, gathered without gradient and unit-normalised: a queue's "z" entries."""
        return F.normalize(self.gathers.gather(x.detach().float().contiguous()), dim=1)

    @property
    def needs(self) -> Needs:
        return Needs()

    @property
    def needs_reason(self) -> str:
        """The options that make `needs` necessary, e.g. "--loss clip"."""
        return f"--loss {self.name}"

    @property
    def momentum(self) -> float | None:
        """Base EMA of a momentum target network; None: no target network."""
        return None

    @property
    def scalars(self) -> dict[str, float]:
        """The loss's learned scalars, name -> initial value (`Learner`); rows() reads them from `learner.scalars`."""
        return {}

    def projection_dim(self, proj_dim: int, caption_dim: int | None) -> int:
        """The projection size the objective trains (CLIP: the caption embedding's)."""
        return proj_dim

    def make_queue(self, proj_dim: int, k: int | None, seed: int, device: torch.device) -> Queue | None:
        return None

    def queue_entries(self, views: Views, batch: dict) -> dict[str, Tensor]:
        """What every rank pushes after a step (only called when there is a queue)."""
        raise NotImplementedError

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, stats) for this rank (module docstring)."""
        raise NotImplementedError

    def build(self, encoder: Encoder, proj_dim: int, proj_hidden: int, k: int | None, seed: int,
              device: torch.device, world_size: int) -> Learner:
        """Make the learner (what the optimizer trains and DDP wraps), the target network and the queue."""
        learner = Learner(encoder, proj_dim, proj_hidden if self.predictor else None, self.scalars)
        self.learner = use_sync_batchnorm(learner, device, world_size).to(device)
        if device.type == "cuda":
            self.learner = self.learner.to(memory_format=torch.channels_last)
        if self.momentum is not None:
            self.target = copy.deepcopy(self.learner.encoder).requires_grad_(False)
        self.queue = self.make_queue(proj_dim, k, seed, device)
        return self.learner

    @staticmethod
    def online_views(net: nn.Module, images: Tensor) -> Views:
        """The learner's outputs for images = [view 1; view 2]: z1, z2 (and p1, p2 with a predictor); `net` is the
        learner, DDP-wrapped or not."""
        z, p = net(images)
        views = Views(*z.chunk(2))
        if p is not None:
            views.p1, views.p2 = p.chunk(2)
        return views

    def views(self, net: nn.Module, images: Tensor) -> Views:
        """The rank's outputs for images = [view 1; view 2]: `online_views`, and the target network's t1, t2
        (without autograd). The two-pass step of --micro-batch (`xclr_train.micro_batch`) relies on this split: it
        runs views() on each chunk of samples without autograd, then online_views() on it again with autograd, and
        backpropagates only through the online outputs; so an objective's loss may differentiate z and p alone, and
        anything else views() adds must need no gradient."""
        views = self.online_views(net, images)
        if self.target is not None:
            with torch.no_grad():
                views.t1, views.t2 = self.target(images).chunk(2)
        return views

    @torch.no_grad()
    def after_step(self, views: Views, batch: dict, step: int, total: int) -> None:
        """After the optimizer step `step` (counted from 1) of `total`: move the target network, push the queue."""
        if self.target is not None:
            ema_update(self.target, self.learner.encoder, momentum_at(step, total, self.momentum))
        if self.queue is not None:
            self.queue.push(self.queue_entries(views, batch))

    def state_dict(self) -> dict:
        state = {}
        if self.learner.predictor is not None:
            state["predictor"] = self.learner.predictor.state_dict()
        if self.learner.scalars is not None:
            state["scalars"] = self.learner.scalars.state_dict()
        if self.target is not None:
            state["target"] = self.target.state_dict()
        if self.queue is not None:
            state["queue"] = self.queue.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.learner.predictor is not None:
            self.learner.predictor.load_state_dict(state["predictor"])
        if self.learner.scalars is not None:
            self.learner.scalars.load_state_dict(state["scalars"])
        if self.target is not None:
            self.target.load_state_dict(state["target"])
        if self.queue is not None:
            self.queue.load_state_dict(state["queue"])


class SoftTargets(Objective):
    """An objective whose loss is the cross-entropy against target weights w_ab over the global batch's samples
    (`losses.soft.soft_contrastive`): a subclass gives `weights` (m, M) and may compute the same loss faster
    (`loss`); rows() adds the target statistics."""

    def weights(self, batch: dict, c: Columns) -> Tensor:
        """w (m, M): the rank's samples against the global batch's."""
        raise NotImplementedError

    def loss(self, c: Columns, weights: Tensor) -> Tensor:
        return soft_contrastive(c.anchors, c.columns, c.self_cols, weights, self.args.tau)

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.columns(views, batch, rank)
        weights = self.weights(batch, c)
        return self.loss(c, weights), target_stats(weights, c.own, batch["caption_id"], c.caption_ids, c.big_m)


def parse_options(name: str, given: Mapping[str, Any]) -> Options:
    """The Args of objective `name` from the options the user gave (the rest at their defaults), checked."""
    if name not in OBJECTIVES:
        raise TrainError(f"unknown --loss {name!r}; choose from {', '.join(OBJECTIVES)}")
    args_class = OBJECTIVES[name].Args
    own = {f.name for f in fields(args_class)}
    for key in given:
        if key not in own:
            takers = [n for n, c in OBJECTIVES.items() if key in {f.name for f in fields(c.Args)}]
            raise TrainError(f"{flag(key)} is for --loss {either(takers)}, not {name}" if takers else
                             f"no objective takes {flag(key)}")
    return args_class(**given)


def make_objective(name: str, given: Mapping[str, Any], graph: Graph, gathers: Gathers = PROCESS_GROUP) -> Objective:
    """The objective `name` with the options given (`parse_options`) over the shards' caption graph."""
    args = parse_options(name, given)
    return OBJECTIVES[name](args, graph, gathers)
