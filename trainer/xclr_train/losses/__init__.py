"""Losses, one per module; each has a whole-batch function (tested against loop references) and the row-level
form the trainer uses under DDP (local rows against the gathered global columns)."""

from xclr_train.losses.byol import byol_loss
from xclr_train.losses.clip import clip_loss
from xclr_train.losses.contrastive import contrastive_loss
from xclr_train.losses.moco import moco_loss
from xclr_train.losses.nnclr import nnclr_loss
from xclr_train.losses.npair import npair_loss
from xclr_train.losses.simclr import nt_xent_loss
from xclr_train.losses.supcon import supcon_loss
from xclr_train.losses.triplet import triplet_loss
from xclr_train.losses.xclr import xclr_loss

__all__ = ["byol_loss", "clip_loss", "contrastive_loss", "moco_loss", "nnclr_loss", "npair_loss", "nt_xent_loss",
           "supcon_loss", "triplet_loss", "xclr_loss"]
