"""Losses, one per module; each has a whole-batch function (tested against loop references) and the row-level
form the trainer uses under DDP (local rows against the gathered global columns)."""

from xclr_train.losses.clip import clip_loss
from xclr_train.losses.simclr import nt_xent_loss
from xclr_train.losses.supcon import supcon_loss
from xclr_train.losses.xclr import xclr_loss

__all__ = ["clip_loss", "nt_xent_loss", "supcon_loss", "xclr_loss"]
