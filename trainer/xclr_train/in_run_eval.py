"""In-run evaluation (`xclr-train --eval-data SPEC [--eval-queries SPEC] [--eval-every STEPS]`): every STEPS steps
and after the last step, the main rank embeds a labelled set with the current backbone and logs, as a line of its
own in RUN/metrics.jsonl and as eval/<name> in TensorBoard::

    {"step": S, "eval/knn_accuracy": ..., "eval/caption_R@1": ..., "eval/images": n, "eval/seconds": t}

The protocol is xclr-eval's at its defaults, run by the same code: the sets as `xclr_train.evalsets.load_sets` reads
them (label field "label", IDX split "test"), the views and features of `xclr_train.eval_features`, the database and
queries of `xclr_train.eval_metrics.halves` (split with xclr-eval's default seed, or the held-out queries) and its
`knn_accuracy`; `caption_R@1` only with held-out queries whose images, like the database's, all have captions (as
xclr-eval). So `xclr-eval` on the checkpoint of step S gives the same kNN accuracy. Images that do not decode are
left out, as xclr-eval leaves them out; `eval/images` counts those evaluated.

Read once: at set-up the main rank reads the sets, decodes every image into its uint8 view (kept on the CPU) and
cuts database and queries; a set that cannot be read, with no decodable image, or that cannot be split, is a
TrainError there, before any step. Each evaluation then runs the backbone in eval mode (fp32, no autocast) over the
views and scores the features on the training device.

It does not perturb training: the backbone's BatchNorm layers use, not update, their running statistics in eval
mode, and every module's mode is restored; the forward draws no random numbers, and the global generators are
forked around it all the same (`torch.random.fork_rng`), so the data loaders and augmentations that draw from them
see the same stream; the training window's clock leaves out the evaluation's time (`after_step` returns it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from xclr_train.config import TrainConfig
from xclr_train.distributed import Dist
from xclr_train.errors import TrainError
from xclr_train.eval_features import features, view_batches
from xclr_train.eval_metrics import DEFAULT_SEED, caption_recall, halves, knn_accuracy
from xclr_train.evalsets import EvalSetError, caption_ids, combine, load_sets
from xclr_train.metrics_log import MetricsLog
from xclr_train.models import Encoder

# How long the other ranks wait for the main rank's evaluation. They wait in a broadcast on a gloo group of their
# own, made with this timeout (`dist.new_group`), not in a collective of the training process group: that group's
# timeout (NCCL's watchdog, gloo's) bounds one collective and would end the run during a long evaluation, and
# raising it would delay the detection of a hung training collective just as long. A rank that dies breaks the
# gloo connections (and torchrun stops the others) at once, so this bound only matters for a main rank that hangs.
WAIT = timedelta(days=1)


@dataclass(frozen=True)
class EvalData:
    """What the main rank evaluates on: the uint8 views in `view_batches`'s batches (CPU), the labels of the images
    that decode, the database and query indices into them and their caption ids (or None), on the device."""
    views: tuple[Tensor, ...]
    labels: Tensor
    db: Tensor
    q: Tensor
    caption: Tensor | None


def load_eval_data(data: str, queries: str | None, image_size: int, device: torch.device) -> EvalData:
    """The sets at `data` (and the held-out `queries`), decoded for `image_size` (module docstring); TrainError for
    a set that cannot be used."""
    try:
        database, held_out = load_sets(data, queries)
    except (EvalSetError, FileNotFoundError) as exc:
        raise TrainError(f"--eval-data: {exc}") from None
    evalset, query = (database, None) if held_out is None else combine(database, held_out)
    captions = None if held_out is None else caption_ids(evalset)
    batches = list(view_batches(evalset.images, image_size))
    ok = np.concatenate([decoded for _, decoded in batches])
    if not ok.any():
        where = data if queries is None else f"{data} and {queries}"
        raise TrainError(f"--eval-data: none of the {len(ok)} images of {where} decodes")
    labels = evalset.labels[ok]
    try:
        db, q = halves(labels, None if query is None else query[ok], DEFAULT_SEED)
    except ValueError as exc:
        raise TrainError(f"--eval-data {data}: {exc}") from None
    if not (len(db) and len(q)):
        raise TrainError(f"--eval-data {data}: no decodable {'database' if not len(db) else 'query'} image")
    caption = None if captions is None else captions[1][ok]
    if caption is not None and not np.isin(caption[q], caption[db]).any():
        raise TrainError(f"--eval-queries {queries}: no query caption has an image in --eval-data {data}")

    def on_device(x: np.ndarray) -> Tensor:
        return torch.as_tensor(x, dtype=torch.long, device=device)

    return EvalData(tuple(views for views, _ in batches), on_device(labels), on_device(db), on_device(q),
                    None if caption is None else on_device(caption))


class InRunEval:
    """The in-run evaluation of one run on every rank (module docstring): the main rank evaluates and logs, the
    others wait for it."""

    def __init__(self, cfg: TrainConfig, ranks: Dist) -> None:
        """Every rank builds it at set-up (the wait group is made by all); the main rank reads the sets. A set the
        main rank cannot use is a TrainError on every rank."""
        self.every, self.device, self.is_main = cfg.eval_every, ranks.device, ranks.is_main
        self.group = dist.new_group(backend="gloo", timeout=WAIT) if ranks.world_size > 1 else None
        self.data: EvalData | None = None
        self.done_at: int | None = None  # the step evaluated last
        if not self.is_main:
            self._wait()
            return
        try:
            self.data = load_eval_data(cfg.eval_data, cfg.eval_queries, cfg.image_size, ranks.device)
        except TrainError:
            self._release(ok=False)
            raise
        self._release()

    @staticmethod
    def build(cfg: TrainConfig, ranks: Dist) -> InRunEval | None:
        """The run's in-run evaluation, or None without --eval-data."""
        return None if cfg.eval_data is None else InRunEval(cfg, ranks)

    def after_step(self, step: int, encoder: Encoder, log: MetricsLog | None) -> float:
        """Evaluate after `step` when it is a multiple of --eval-every; the seconds this took (0 if not)."""
        if self.every is None or step % self.every:
            return 0.0
        return self.evaluate(step, encoder, log)

    def at_end(self, step: int, encoder: Encoder, log: MetricsLog | None) -> None:
        """Evaluate after the last step, unless `after_step` just did (or a rerun of the finished run finds the
        line in the log: `evaluate`)."""
        if self.done_at != step:
            self.evaluate(step, encoder, log)

    def evaluate(self, step: int, encoder: Encoder, log: MetricsLog | None) -> float:
        """The main rank's evaluation line for `step`, unless the log holds it already (other ranks wait for it);
        the seconds it took."""
        t0 = time.perf_counter()
        if not self.is_main:
            self._wait()
        else:
            if not log.holds(step, "eval/knn_accuracy"):
                record = {"step": step, **self.measure(encoder)}
                record["eval/seconds"] = time.perf_counter() - t0
                log.write(record)
            self._release()
        self.done_at = step
        return time.perf_counter() - t0

    def measure(self, encoder: Encoder) -> dict[str, float]:
        """eval/knn_accuracy (and eval/caption_R@1, eval/images) of `encoder`'s backbone as it is now."""
        data, backbone = self.data, encoder.backbone
        modes = [(module, module.training) for module in backbone.modules()]
        backbone.eval()
        try:
            with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
                x = torch.cat([features(encoder, views, self.device) for views in data.views])
        finally:
            for module, mode in modes:
                module.training = mode
        db, q = data.db, data.q
        record = {"eval/knn_accuracy": knn_accuracy(x[db], data.labels[db], x[q], data.labels[q])}
        if data.caption is not None:
            record["eval/caption_R@1"] = caption_recall(x[db], data.caption[db], x[q], data.caption[q])["caption_R@1"]
        record["eval/images"] = len(x)
        return record

    def _release(self, ok: bool = True) -> None:
        """The main rank: let the waiting ranks go on (or stop, with `ok` False)."""
        if self.group is not None:
            dist.broadcast(torch.tensor([int(ok)]), src=0, group=self.group)

    def _wait(self) -> None:
        """Another rank: wait (up to WAIT) for the main rank's `_release`."""
        flag = torch.zeros(1, dtype=torch.long)
        dist.broadcast(flag, src=0, group=self.group)
        if not flag.item():
            raise TrainError("the main rank could not use --eval-data (its error says why)")
