"""`xclr-prep embed`: the Ray-distributed caption embedding stage.

Driver flow:

1. Find the inputs, check table columns and the model path: bad input fails before Ray starts.
2. (The command line holds OUT's lock, `xclr_schemas.out_lock`: a second command on OUT is refused at once.)
   ``OUT/plan.json`` holds a fingerprint of the inputs (path, size, mtime or object version) and of every option
   that changes the output. An --out holding another plan is refused, naming the inputs or options that changed;
   one with the same plan is resumed; a complete one (``manifest.json`` present) is left as it is.
3. Ray: a local instance started in-process and sized to the machine, or an existing cluster (``ray_address``).
   An actor pool of `EmbedWorker` (model loaded once per actor). An actor that dies is restarted by Ray and its
   unit retried; a unit is given up after `xclr_prep.raypool.MAX_ATTEMPTS`.
4. Scan: one unit per input file without a scan marker (`xclr_prep.scan`).
5. Dedup on the driver (`xclr_prep.dedup`).
6. Embed: one unit per scan part without a valid done marker (`xclr_prep.embed_part`).
7. ``manifest.json`` is written last, once the inputs are seen unchanged (a file modified while the command ran
   is refused: no manifest over mixed inputs); the intermediate ``scan/`` folder is then removed.

A kill -9 at any point leaves only complete files under final names plus temporaries that the rerun deletes;
the rerun redoes exactly the units without markers and ends with the same directory. So does a full disk, which
stops the command with one line (`xclr_prep.fsutil.no_space_as_error`), even when a worker's write met it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import ray

from xclr_prep.corpus import CorpusSpec, InputFile, check_columns, find_inputs
from xclr_prep.dedup import PartIds, assign_caption_ids
from xclr_prep.errors import PrepError
from xclr_prep.fsutil import InputIdentity, Plan, claim_dir, no_space_as_error, require_unchanged
from xclr_prep.options import EmbedOptions
from xclr_prep.raypool import cluster_device, pool_shape, require_shared, run_stage, start_pool, start_ray
from xclr_prep.scan import read_digests, read_scan_marker, scan_file
from xclr_schemas import EMBED_SCHEMA_VERSION, MANIFEST, default_caption_model, part_paths, storage
from xclr_schemas.atomic import remove_temporaries, write_json_atomic
from xclr_schemas.names import PLAN, SCAN

NORMALISATION = "nfc-trim-collapse-whitespace/1"


@dataclass(frozen=True)
class ScanUnit:
    """Scan input file `index` into parts of `part_size` rows (`xclr_prep.scan`)."""
    index: int
    file: InputFile
    spec: CorpusSpec
    out: Path
    part_size: int
    too_long: str
    weight = 1  # a file


@dataclass(frozen=True)
class EmbedUnit:
    """Embed scan part `index` (at `scan_path`), whose unique captions take the ids `ids` (`xclr_prep.embed_part`)."""
    index: int
    scan_path: Path
    ids: PartIds
    out: Path
    dtype: str

    @property
    def weight(self) -> int:
        return self.ids.end - self.ids.start  # captions


class EmbedWorker:
    """Ray actor: holds one loaded CaptionEncoder; scans input files and embeds parts."""

    def __init__(self, model: str, device: str, batch_size: int, threads: int) -> None:
        import torch

        from xclr_prep.encoder import CaptionEncoder

        if device == "cpu":
            torch.set_num_threads(threads)
        self.encoder = CaptionEncoder(model, device, batch_size)
        self.worker = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def info(self) -> dict:
        e = self.encoder
        return {"dim": e.dim, "max_seq_length": e.max_seq_length, "weights_sha256": e.weights_sha256, **self.worker}

    def scan(self, u: ScanUnit) -> dict:
        e = self.encoder
        return scan_file(u.index, u.file, u.spec, u.out, u.part_size, e.count_tokens, e.max_seq_length, u.too_long)

    def embed(self, u: EmbedUnit) -> dict:
        from xclr_prep.embed_part import write_embed_part

        return write_embed_part(u.out, u.index, u.scan_path, u.ids, self.encoder, u.dtype, self.worker)


def _plan(files: list[InputFile], opts: EmbedOptions, model: str) -> Plan:
    """The plan of an embed run: the input files as they are now (one deleted since it was found is left out:
    `fsutil.input_changes` names it gone) and every option that changes the output."""
    options = {
        "spec": asdict(opts.spec),
        "model": model,
        "dtype": opts.dtype,
        "too_long": opts.too_long,
        "part_size": opts.part_size,
        "normalisation": NORMALISATION,
    }
    inputs = tuple(i for f in files if (i := InputIdentity.of_file(f.path, f.format)) is not None)
    return Plan(inputs, options, EMBED_SCHEMA_VERSION)


def run_embed(opts: EmbedOptions) -> dict:
    """Run (or resume) the embed stage; return the manifest. Raises PrepError on bad input or options, or a full
    disk. The caller holds OUT's lock (`xclr_schemas.out_lock`)."""
    t0 = time.perf_counter()
    model = opts.model or default_caption_model()
    files = find_inputs(list(opts.inputs), opts.input_format)
    for f in files:
        check_columns(f, opts.spec)
    plan = _plan(files, opts, model)
    out = opts.out
    with no_space_as_error(out):
        if claim_dir(out, plan, "embed", "an embed run", "use another --out or delete it"):
            print(f"{out} is already complete")
            return json.loads((out / MANIFEST).read_text())
        remove_temporaries(out)

        start_ray(opts.ray_address)
        try:
            require_shared([str(out / PLAN)] + [f.path for f in files if not storage.is_url(f.path)])
            device = cluster_device(opts.device)
            # CPU: one actor per 8 CPUs (torch scales poorly past that); GPU: one per GPU.
            n, cpus, gpus = pool_shape(device, opts.num_workers, opts.gpus_per_worker, 8)
            actors = start_pool(EmbedWorker, n, cpus, gpus, model, device, opts.batch_size, cpus)
            infos = ray.get([a.info.remote() for a in actors])
            t_ready = time.perf_counter()
            manifest = _run_stages(opts, out, files, actors, infos[0], device, plan.fingerprint, model)
        finally:
            ray.shutdown()
        manifest["run"] = {"workers": n, "device": device, "cpus_per_worker": cpus, "gpus_per_worker": gpus,
                           "startup_seconds": round(t_ready - t0, 2), "seconds": round(time.perf_counter() - t0, 2)}
        remove_temporaries(out)  # of writers that died with their node while others finished their units
        require_unchanged(out, plan)
        write_json_atomic(out / MANIFEST, manifest)
        shutil.rmtree(out / SCAN, ignore_errors=True)
    return manifest


def _embedded_parts(out: Path, units: list[EmbedUnit], weights_sha256: str) -> dict[int, dict]:
    """The done markers of the parts whose marker covers the same caption ids (embedded by an earlier run). Raises
    PrepError when one was embedded with other weights."""
    done: dict[int, dict] = {}
    for u in units:
        marker_path = part_paths(out, u.index)["done"]
        marker = json.loads(marker_path.read_text()) if marker_path.exists() else None
        if marker and (marker["caption_start"], marker["caption_end"]) == (u.ids.start, u.ids.end):
            if marker["weights_sha256"] != weights_sha256:
                raise PrepError(f"{out} was partly embedded with other model weights; use another --out")
            done[u.index] = marker
    return done


def _run_stages(opts: EmbedOptions, out: Path, files: list[InputFile], actors: list, info: dict, device: str,
                fingerprint: str, model: str) -> dict:
    """Scan the input files and embed the parts that have no done marker yet, on `actors`; the manifest (not yet
    written), whose counts hold input rows = kept + skipped. PrepError when no row could be kept."""
    markers = {i: marker for i in range(len(files)) if (marker := read_scan_marker(out, i))}
    run_stage(actors, "scan", [ScanUnit(i, f, opts.spec, out, opts.part_size, opts.too_long)
                               for i, f in enumerate(files)], markers, "scan", "file", opts.progress)

    scan_parts = [out / SCAN / p["name"] for i in range(len(files)) for p in markers[i]["parts"]]
    part_ids, duplicate_keys = assign_caption_ids([read_digests(p) for p in scan_parts])
    unique = part_ids[-1].end if part_ids else 0

    units = [EmbedUnit(index, scan_path, ids, out, opts.dtype) for index, (scan_path, ids)
             in enumerate(zip(scan_parts, part_ids))]
    done = _embedded_parts(out, units, info["weights_sha256"])
    run_stage(actors, "embed", units, done, "embed", "caption", opts.progress)

    skipped: Counter[str] = Counter()
    for m in markers.values():
        skipped.update(m["skipped"])
    if duplicate_keys:
        skipped["duplicate_key"] += duplicate_keys
    rows_in = sum(m["rows_in"] for m in markers.values())
    kept = sum(m["samples"] for m in done.values())
    skipped_files = [{"path": m["path"], "reason": m["file_error"]} for m in markers.values() if m["file_error"]]
    if kept == 0:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "no rows"
        raise PrepError(f"nothing to embed: {rows_in} input rows, all skipped ({detail}); "
                        f"{len(skipped_files)} of {len(files)} files unreadable")
    return {
        "schema_version": EMBED_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input_fingerprint": fingerprint,
        "model": {"name": model, "weights_sha256": info["weights_sha256"], "dim": info["dim"],
                  "max_seq_length": info["max_seq_length"]},
        "dtype": opts.dtype,
        "normalisation": NORMALISATION,
        "classnames": list(opts.spec.classnames) if opts.spec.classnames else None,
        "options": {"spec": asdict(opts.spec), "too_long": opts.too_long, "part_size": opts.part_size,
                    "batch_size": opts.batch_size, "device": device},
        "counts": {
            "input_files": len(files),
            "files_skipped": len(skipped_files),
            "input_rows": rows_in,
            "kept": kept,
            "skipped": dict(sorted(skipped.items())),
            "skipped_total": sum(skipped.values()),
            "unique_captions": unique,
            "truncated": sum(m["truncated"] for m in markers.values()),
        },
        "skipped_files": skipped_files,
        "inputs": [{"path": f.path, "format": f.format, "rows_in": markers[i]["rows_in"]}
                   for i, f in enumerate(files)],
        "parts": [{k: done[i][k] for k in ("index", "samples", "caption_start", "caption_end")}
                  for i in sorted(done)],
    }
