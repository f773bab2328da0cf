"""Every GPU figure the docs wait for, in one command sized to run in about 8 minutes on one GPU (not yet run on
one), each figure against a baseline measured in the same run (docs/benchmarks.md, "On a GPU: one command").

    bash benchmarks/gpu_check.sh                          # a GPU node: runs/gpu-check/gpu-check.{json,txt}
    bash benchmarks/gpu_check.sh --device cpu --quick     # the dry run of the suite (tests/test_gpu_check.py)

It needs no corpus and imports neither Ray nor FAISS (faiss-gpu's row is measured where it is installed). Sections,
in this order (SECTIONS; --sections runs some); the JSON is rewritten after each, so that a run cut short keeps
what it measured, and a section that fails is recorded with its one-line error while the others run (the command
then exits 1):

  embed   captions/s of xclr's CaptionEncoder (token-count batches; fp16 on CUDA) against a plain
          SentenceTransformer.encode of the same model in the same precision and batch size, taking turns. The
          model is all-MiniLM-L6-v2's architecture and tokenizer with random weights (`random_model`: its weights
          do not fit the wheel folder, and the speed of a dense transformer does not depend on their values); the
          captions are 4 to 20 words drawn from its vocabulary, seeded.
  topk    exact top-k (k = 32) of Q queries among N random unit vectors (dim 384, stored fp16 as embed stores
          them): xclr's torch engine (`xclr_prep.torch_search`: database blocks copied from host memory) against
          plain torch matmuls + topk of PLAIN_QUERIES queries each, the whole database already on the device;
          and faiss-gpu's `knn_gpu` where FAISS with GPUs is importable (timed apart: its failure is recorded and
          the other rows kept). Reported: seconds, the effective FLOP/s (2 Q N D over the whole call: for xclr's
          engine that includes gathering each block on the host and copying it, not the matmul's rate alone),
          and the time of a whole graph of N captions (N / Q times the query set's).
  step    bench_train section 2 (`bench_train.bench_step`): ResNet-50 at 224 px, B = 256, bf16, on synthetic
          crops (no loader): step time and phases, and the X-CLR objective's forward + backward and SimCLR's
          NT-Xent on the same projections, each as a share of the step.
  loader  `python -m xclr_train` itself, X-CLR on tiny shards written here (`write_shards`: JPEGs of smooth
          random colour fields, one caption and its graph neighbours each), with `workers` DataLoader workers,
          one epoch of `loader_steps` steps (the workers start once): after a warm-up of two batches a worker,
          the share of the time spent waiting for data (sum of its metrics' data_time / sum of step_time), the
          samples a second, and its mean step against `step`'s synthetic one (each logged step synchronises
          with the device; the smooth JPEGs decode faster than photos, so the share is a lower bound).
  memory  bench_step_memory (`measure`): step time and peak memory above the set-up of the plain step, of
          --micro-batch B/4 and (CUDA only: inductor's CPU build alone would take the dry run's budget) of
          --compile, each in a process of its own (at most CHILD_SECONDS each), as ratios to the plain step; a
          configuration that fails is recorded with its error beside the others' rows.

Sizes: FULL on a GPU; QUICK (--quick) runs every section in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

DIM, K = 384, 32  # the caption model's embedding size; the graph's neighbours
CHILD_SECONDS = 300  # the loader's xclr-train run and each memory configuration: a hang costs no more
PLAIN_QUERIES = 1024  # queries per matmul of the plain top-k: 1024 x 1M similarities are 4 GB in float32
TURNS = 5  # timed turns of each section's functions, after a warm-up call each (two on CUDA)
WEIGHT_FILES = (".safetensors", ".bin", ".onnx", ".xml")


@dataclass(frozen=True)
class Sizes:
    captions: int  # embed: captions encoded per turn
    embed_batch: int
    vectors: int  # topk: N database vectors
    queries: int  # topk: Q of them searched
    arch: str  # step, loader, memory
    image_size: int
    batch: int
    steps: int  # timed steps of `step` and `memory`
    loader_steps: int  # steps of the xclr-train run, one epoch; the first 2 x workers are its warm-up
    workers: int  # DataLoader workers of the xclr-train run (at most the CPUs this process may use, less one)
    samples: int  # in the tiny shards
    source_px: int  # side of their JPEGs, cropped and resized to image_size by the trainer


FULL = Sizes(captions=40_000, embed_batch=256, vectors=1_000_000, queries=16_384, arch="resnet50", image_size=224,
             batch=256, steps=20, loader_steps=160, workers=16, samples=4_096, source_px=320)
QUICK = Sizes(captions=64, embed_batch=16, vectors=4_000, queries=512, arch="convnet", image_size=32, batch=8,
              steps=2, loader_steps=6, workers=1, samples=64, source_px=48)


def in_turns(fns: dict[str, Callable[[], object]], device: str) -> dict[str, float]:
    """Median seconds of each function over TURNS turns (bench_train.bench_interleaved, whose budget then plays no
    part)."""
    from bench_train import bench_interleaved

    return bench_interleaved(fns, torch.device(device), budget=0.0, max_repeats=TURNS)[0]


def machine(device: str) -> dict:
    """The card (or CPU), its driver and the software the figures were measured with; what cannot be read is
    None (nothing here may stop the run)."""
    info = {"device": device, "python": platform.python_version(), "host": platform.node(), "cpus": usable_cpus(),
            **{name: distribution_version(name)
               for name in ("torch", "torchvision", "sentence-transformers", "transformers")},
            "shm_gib": shutil.disk_usage("/dev/shm").total / 2**30 if Path("/dev/shm").is_dir() else None}
    if device == "cuda":
        driver, mode = smi_query(("driver_version", "compute_mode"))
        props = torch.cuda.get_device_properties(0)
        info |= {"card": torch.cuda.get_device_name(0), "memory_gib": props.total_memory / 2**30, "driver": driver,
                 "compute_mode": mode, "cuda": torch.version.cuda}
    else:
        info["card"] = platform.processor() or platform.machine()
    return info


def distribution_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:  # on PYTHONPATH without metadata
        return None


def smi_query(fields: tuple[str, ...]) -> list[str | None]:
    """nvidia-smi's `fields` of the GPU torch calls 0 (matched by UUID; CUDA_VISIBLE_DEVICES may hide others),
    each None where nvidia-smi is missing or fails."""
    smi = shutil.which("nvidia-smi")
    try:
        out = subprocess.run([smi, f"--query-gpu=uuid,{','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout if smi else ""
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", "")).removeprefix("GPU-")
    rows = [line.split(", ") for line in out.splitlines() if line.count(", ") == len(fields)]
    row = next((r for r in rows if r[0].removeprefix("GPU-") == uuid), rows[0] if len(rows) == 1 else None)
    return row[1:] if row else [None] * len(fields)


def usable_cpus() -> int:
    """The CPUs this process may run on (a batch scheduler's limit, where os.cpu_count() gives the node's)."""
    return len(os.sched_getaffinity(0))


# --- embed -----------------------------------------------------------------------------------------------------


def copy_model_files(model: Path, out: Path) -> None:
    """A sentence-transformers folder less its weights: configuration, tokenizer, pooling (scripts/gpu_wheels.sh
    carries them to a node this way)."""
    shutil.copytree(model, out, ignore=lambda _, names: [n for n in names if n.endswith(WEIGHT_FILES)])


def random_model(model_files: Path, out: Path) -> Path:
    """A sentence-transformers folder at `out`: `model_files`' configuration, tokenizer and pooling, with random
    weights of the architecture its config.json names (seed 0)."""
    from transformers import AutoConfig, AutoModel

    copy_model_files(model_files, out)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(model_files)).save_pretrained(out)
    return out


def random_captions(vocab: Path, n: int) -> list[str]:
    """n captions of 4 to 20 whole words of a WordPiece vocabulary, seeded."""
    words = [w for w in vocab.read_text(encoding="utf-8").split("\n") if w.isalpha() and len(w) > 2]
    rng = random.Random(0)
    return [" ".join(rng.choices(words, k=rng.randint(4, 20))) for _ in range(n)]


def embed(s: Sizes, device: str, work: Path, model_files: Path) -> dict:
    from sentence_transformers import SentenceTransformer

    from xclr_prep.encoder import CaptionEncoder

    model = random_model(model_files, work / "model")
    captions = random_captions(model / "vocab.txt", s.captions)
    ours = CaptionEncoder(str(model), device, s.embed_batch)
    plain = SentenceTransformer(str(model), device=device)
    if device == "cuda":
        plain.half()
    seconds = in_turns({
        "xclr": lambda: ours.encode(captions),
        "plain": lambda: plain.encode(captions, batch_size=s.embed_batch, normalize_embeddings=True,
                                      show_progress_bar=False)}, device)
    return {"captions": s.captions, "batch_size": s.embed_batch, "precision": "fp16" if device == "cuda" else "fp32",
            "xclr_captions_per_s": s.captions / seconds["xclr"], "plain_captions_per_s": s.captions / seconds["plain"],
            "xclr_speedup": seconds["plain"] / seconds["xclr"]}


# --- topk ------------------------------------------------------------------------------------------------------


class ArrayRows:
    """In-memory rows as `xclr_schemas.EmbeddingRows` serves them: fp16 stored, float32 copies out."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def take(self, ids: np.ndarray) -> np.ndarray:
        return self.x[ids].astype(np.float32)


def faiss_gpu() -> object | None:
    """FAISS, where the installed one has GPUs; else None."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 else None


def topk(s: Sizes, device: str) -> dict:
    from xclr_prep.torch_search import exact_search_torch

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(s.vectors, DIM, generator=g), dim=1).half().numpy()
    rows, ids = ArrayRows(x), np.arange(s.vectors)
    queries = rows.take(ids[:s.queries])
    dtype = torch.float16 if device == "cuda" else torch.float32
    database, q = torch.from_numpy(x).to(device, dtype), torch.from_numpy(queries).to(device, dtype)
    seconds = in_turns({"xclr": lambda: exact_search_torch(rows, queries, ids, K + 1, device),
                        "plain": lambda: [(q[i:i + PLAIN_QUERIES] @ database.T).float().topk(K + 1, dim=1)
                                          for i in range(0, s.queries, PLAIN_QUERIES)]}, device)
    faiss_row = "skipped: no FAISS with GPUs is installed"
    try:
        faiss = faiss_gpu() if device == "cuda" else None
        if faiss is not None:
            resources = faiss.StandardGpuResources()
            seconds |= in_turns({"faiss_gpu": lambda: faiss.knn_gpu(
                resources, queries.astype(np.float16), x, K + 1, metric=faiss.METRIC_INNER_PRODUCT)}, device)
            faiss_row = "measured"
    except Exception as exc:  # noqa: BLE001 - its own row: xclr's and the plain figures stand
        faiss_row = f"failed: {first_line(exc)}"
    flop = 2 * s.queries * s.vectors * DIM
    out = {"vectors": s.vectors, "queries": s.queries, "dim": DIM, "k": K, "faiss_gpu": faiss_row,
           "xclr_time_vs_plain": seconds["xclr"] / seconds["plain"]}
    for name, t in seconds.items():
        out |= {f"{name}_seconds": t, f"{name}_effective_tflops": flop / t / 1e12,
                f"{name}_graph_seconds": t * s.vectors / s.queries}
    return out


# --- step ------------------------------------------------------------------------------------------------------


def step(s: Sizes, device: str) -> dict:
    from bench_train import bench_step

    out = bench_step(s.arch, s.image_size, s.batch, s.steps, torch.device(device), budget=5.0, max_repeats=50)
    out["simclr_fraction_at_b"] = out["simclr_ms_at_b"] / out["step_ms"]
    return out


# --- loader ----------------------------------------------------------------------------------------------------


def smooth_jpeg(rng: np.random.Generator, px: int) -> bytes:
    """A JPEG of a smooth random colour field (an 8 x 8 grid of colours, upsampled): it compresses as a photo
    does, where noise would not, with fewer coefficients to decode (so it decodes at least as fast)."""
    from PIL import Image

    grid = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    buf = io.BytesIO()
    grid.resize((px, px), Image.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(out: Path, s: Sizes, per_shard: int = 256) -> Path:
    """Shards in the layout `xclr_schemas.shards` documents, with a manifest of what the trainer reads of one
    (its schema version, the graph's mean background and k-th similarity): samples in neighbour groups of 8 of 4
    captions each; a caption's K neighbours are its group's other captions, then random others (similarities
    0.9 down to 0.4, background 0.2, as bench_train's synthetic batch)."""
    from xclr_schemas import MANIFEST, NEIGHBOR_DTYPE, SHARDS_SCHEMA_VERSION, SIZES, npy_bytes, shard_name
    from xclr_schemas.shards import IMAGE_SUFFIX_OF_FORMAT, META_SUFFIX, NEIGHBORS_SUFFIX, TEXT_SUFFIX

    rng = np.random.default_rng(0)
    captions = s.samples // 2
    out.mkdir(parents=True)
    sizes = {}
    for first in range(0, s.samples, per_shard):
        name = shard_name(first // per_shard)
        with tarfile.open(out / name, "w") as tar:
            for i in range(first, min(s.samples, first + per_shard)):
                caption = (i // 8) * 4 + i % 4
                group = [(i // 8) * 4 + j for j in range(4) if (i // 8) * 4 + j != caption]
                nbr = np.zeros(K, NEIGHBOR_DTYPE)
                others = rng.integers(0, captions - 1, K - len(group))
                nbr["id"] = group + [o + (o >= caption) for o in others]  # never the caption itself
                nbr["sim"] = np.linspace(0.9, 0.4, K)
                members = {IMAGE_SUFFIX_OF_FORMAT["JPEG"]: smooth_jpeg(rng, s.source_px),
                           TEXT_SUFFIX: f"caption {caption}".encode(),
                           META_SUFFIX: json.dumps({"caption_id": caption, "group": i // 8}).encode(),
                           NEIGHBORS_SUFFIX: npy_bytes(nbr)}
                for suffix, data in members.items():
                    info = tarfile.TarInfo(f"s{i:07d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        sizes[name] = min(s.samples, first + per_shard) - first
    (out / SIZES).write_text(json.dumps(sizes))
    (out / MANIFEST).write_text(json.dumps({"schema_version": SHARDS_SCHEMA_VERSION, "graph": {
        "background_similarity": {"mean": 0.2}, "kth_similarity_mean": 0.4}}))
    return out


def loader(s: Sizes, device: str, work: Path, synthetic_step_ms: float | None) -> dict:
    from harness import run_measured

    shards = write_shards(work / "shards", s)
    workers = min(s.workers, max(1, usable_cpus() - 1))  # a CPU left to the trainer's own process
    run = work / "train"
    cmd = [sys.executable, "-m", "xclr_train", "--data", str(shards), "--out", str(run), "--arch", s.arch,
           "--image-size", str(s.image_size), "--batch-size", str(s.batch), "--steps", str(s.loader_steps),
           "--samples-per-epoch", str(s.batch * s.loader_steps), "--workers", str(workers), "--log-every", "1",
           "--no-progress", "--device", device]
    run_measured(cmd, timeout=CHILD_SECONDS)  # a failure or a hang (then killed, its workers too): SystemExit
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [x for x in lines if "step_time" in x][2 * workers:]
    if not timed:
        raise RuntimeError(f"xclr-train logged no step after its warm-up of {2 * workers}")
    step_seconds = sum(x["step_time"] for x in timed)
    step_ms = 1e3 * step_seconds / len(timed)
    return {"workers": workers, "steps_timed": len(timed), "step_ms": step_ms,
            "samples_per_s": s.batch * len(timed) / step_seconds,
            "data_wait_share": sum(x["data_time"] for x in timed) / step_seconds,
            "step_vs_synthetic": step_ms / synthetic_step_ms if synthetic_step_ms else None}


# --- memory ----------------------------------------------------------------------------------------------------


def memory(s: Sizes, device: str) -> dict:
    from bench_step_memory import measure, ratios, train_config

    base = f"--arch {s.arch} --image-size {s.image_size} --batch-size {s.batch}"
    configs = [base, f"{base} --micro-batch {s.batch // 4}"] + ([f"{base} --compile"] if device == "cuda" else [])
    rows, errors = [], {}
    for c in configs:
        try:
            rows.append(measure(train_config(c), torch.device(device), warmup=1, steps=s.steps, threads=1,
                                timeout=CHILD_SECONDS))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - harness stops with SystemExit on a failed child
            errors[c] = first_line(exc)
    ratios(rows)
    return {"rows": rows, "errors": errors, "compile": "measured" if device == "cuda" else "skipped on the CPU"}


# --- the run ---------------------------------------------------------------------------------------------------

SECTIONS = ("embed", "topk", "step", "loader", "memory")


def summary(results: dict) -> list[str]:
    """One line a figure (or a failed section's error), for the text file and the terminal."""
    m, sec = results["machine"], results["sections"]
    gpu = f", driver {m['driver']}, CUDA {m['cuda']}, compute mode {m['compute_mode']}" if m["device"] == "cuda" else ""
    shm = f", /dev/shm {m['shm_gib']:.1f} GiB" if m["shm_gib"] is not None else ""
    lines = [f"{m['card']} ({m['device']}{gpu}, torch {m['torch']}, sentence-transformers "
             f"{m['sentence-transformers']}, {m['cpus']} CPUs{shm})"]
    lines += [f"{name}: failed: {error}" for name, error in results["failed"].items()]
    if "embed" in sec:
        e = sec["embed"]
        lines.append(f"embed: {e['xclr_captions_per_s']:,.0f} captions/s ({e['precision']}, batch {e['batch_size']})"
                     f", {e['xclr_speedup']:.2f}x a plain SentenceTransformer.encode's rate")
    if "topk" in sec:
        t = sec["topk"]
        lines.append(f"topk: {t['queries']:,} x {t['vectors']:,} in {t['xclr_seconds']:.3f} s "
                     f"({t['xclr_effective_tflops']:.1f} TFLOP/s over the whole call, "
                     f"{t['xclr_time_vs_plain']:.2f}x the plain matmul + topk's "
                     f"time; a {t['vectors']:,}-caption graph {t['xclr_graph_seconds']:.0f} s); faiss-gpu: "
                     + (f"{t['faiss_gpu_seconds']:.3f} s" if "faiss_gpu_seconds" in t else t["faiss_gpu"]))
    if "step" in sec:
        st = sec["step"]
        lines.append(f"step: {st['arch']} {st['image_size']} px B {st['batch_size']} {st['precision']}: "
                     f"{st['step_ms']:.0f} ms ({st['images_per_s']:,.0f} images/s); X-CLR objective "
                     f"{100 * st['objective_fraction_at_b']:.1f}% of it, "
                     f"SimCLR's {100 * st['simclr_fraction_at_b']:.1f}%")
    if "loader" in sec:
        lo = sec["loader"]
        against = f", {lo['step_vs_synthetic']:.2f}x the synthetic step" if lo["step_vs_synthetic"] else ""
        lines.append(f"loader: {lo['workers']} workers: {100 * lo['data_wait_share']:.0f}% of the time waiting for "
                     f"data, {lo['samples_per_s']:,.0f} samples/s ({lo['step_ms']:.0f} ms a step{against})")
    for r in sec.get("memory", {}).get("rows", []):
        vs = f" ({r['step_vs_plain']:.2f}x, {r['peak_vs_plain']:.2f}x the plain step's)" if r["step_vs_plain"] else ""
        lines.append(f"memory: `{r['options'] or 'the plain step'}`: {r['step_ms']:.0f} ms, peak "
                     f"{r['peak_above_baseline_bytes'] / 2**20:,.0f} MiB above the set-up{vs}")
    return lines


def first_line(exc: BaseException) -> str:
    """The error in one line: its first line (what failed: harness names the command and its exit status or
    timeout) and, when there are more, its last (the child's last words)."""
    lines = str(exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {lines[0]}" + (f" ... {lines[-1]}" if len(lines) > 1 else "")


def main() -> None:
    from xclr_schemas import default_caption_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to measure (cpu: the dry run)")
    ap.add_argument("--quick", action="store_true",
                    help="QUICK sizes, the dry run's: every section in seconds on a CPU (on CUDA --compile still runs)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    help="run these sections only (in SECTIONS' order; loader's step ratio needs step)")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="gpu-check.json and gpu-check.txt here")
    ap.add_argument("--model-files", type=Path, default=None,
                    help="a sentence-transformers folder whose configuration and tokenizer the embed section uses "
                         "(default: the packaged all-MiniLM-L6-v2; scripts/gpu_wheels.sh copies them for a node)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: error: torch sees no GPU (--device cpu runs the dry run)")
    sizes = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(args.device), "sizes": asdict(sizes), "sections": {}, "failed": {},
                     "seconds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = {"embed": lambda: embed(sizes, args.device, work,
                                      args.model_files or Path(default_caption_model())),
               "topk": lambda: topk(sizes, args.device),
               "step": lambda: step(sizes, args.device),
               "loader": lambda: loader(sizes, args.device, work,
                                        results["sections"].get("step", {}).get("step_ms")),
               "memory": lambda: memory(sizes, args.device)}
        for name in [n for n in SECTIONS if n in args.sections]:
            t = time.perf_counter()
            try:
                gc.collect()
                if args.device == "cuda":  # what the last section cached is free for this one's processes
                    torch.cuda.empty_cache()
                got = results["sections"][name] = run[name]()
                if got.get("errors"):  # parts that failed beside parts measured
                    results["failed"][name] = "; ".join(f"{part}: {e}" for part, e in got["errors"].items())
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - recorded; the other sections still run
                results["failed"][name] = first_line(exc)
            results["seconds"][name] = time.perf_counter() - t
            (args.out / "gpu-check.json").write_text(json.dumps(results, indent=2))
            print(f"{name}: {'failed' if name in results['failed'] else 'done'} in {results['seconds'][name]:.0f} s",
                  flush=True)
    text = "\n".join(summary(results)) + "\n"
    (args.out / "gpu-check.txt").write_text(text)
    print(text, end="")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
