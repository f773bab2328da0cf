"""`xclr-prep graph`: the caption graph and the training shards of one embed directory.

Driver flow:

1. Read the embed directory (one-line error when incomplete or of another schema version); find captions whose
   embedding is invalid (not finite, or norm off 1 by more than 0.01): they are no one's neighbour and their
   samples are skipped (``caption_embedding_invalid``). Resolve k (default 32, capped at U - 1; an explicit
   k >= U is an error) and the method.
2. (The command line holds OUT's lock, `xclr_schemas.out_lock`, from before it reads OUT.) A full disk ends the
   command with one line (`xclr_prep.fsutil.no_space_as_error`). ``OUT/plan.json``: a fingerprint of the embed
   manifest, every option and the index recipe (`SearchMethod.recipe`: a graph half searched by a version that
   built another index is not resumed). An OUT holding another plan is refused, naming what changed (a rewritten
   embed directory, or the options); the same plan is resumed; a complete OUT is left as it is. A corpus file that
   changed since embed (the identity the embed directory's ``plan.json`` holds) is refused, named, before any work.
3. Ray (local or ``--ray-address``). Graph: ``OUT/graph/`` searched by a pool of `SearchWorker`
   (`xclr_prep.search_stage`) unless ``--graph`` names an existing graph of the same embed directory. Below the
   recall target the run stops with an error and no graph manifest (``--allow-low-recall`` accepts it).
4. Shards by a pool of `ShardWorker` (`xclr_prep.shard_stage`), then ``sizes.json`` and ``manifest.json`` last.
   Each manifest (the graph's, the shards') is written only if the embed manifest and the corpus files are still
   the ones the run started from: an input rewritten under a running command is refused, not mixed into its output.

Method ``auto``: `xclr_prep.search_methods.auto_method`, given the smallest live Ray node's memory.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import ray

from xclr_prep import knn
from xclr_prep.errors import PrepError
from xclr_prep.fsutil import (
    InputIdentity,
    Plan,
    claim_dir,
    input_changes,
    json_digest,
    no_space_as_error,
    read_plan,
    refuse_changed_inputs,
    require_unchanged,
)
from xclr_prep.options import DEFAULT_K, GraphOptions
from xclr_prep.raypool import cluster_device, pool_shape, require_shared, start_pool, start_ray
from xclr_prep.search_methods import METHODS, auto_method
from xclr_prep.search_stage import GraphPlan, SearchWorker, create_neighbors_file, search_graph
from xclr_prep.shard_stage import EmbedParts, ShardWorker, run_shards
from xclr_schemas import (
    GRAPH_SCHEMA_VERSION,
    MANIFEST,
    SHARDS_SCHEMA_VERSION,
    SIZES,
    EmbeddingRows,
    EmbedDirError,
    GraphDirError,
    load_graph,
    read_manifest,
)
from xclr_schemas.atomic import remove_temporaries, write_json_atomic
from xclr_schemas.names import GRAPH, PLAN

VALIDITY_BLOCK = 32_768  # rows of the embedding check's blocks (invalid_captions)
NORM_TOLERANCE = 0.01


@dataclass(frozen=True)
class CheckedEmbeddings:
    """What the driver keeps of the caption embeddings once checked (`check_embeddings`): their shape and the ids
    of the invalid ones."""

    n: int
    dim: int
    invalid: np.ndarray

    @property
    def valid(self) -> int:
        return self.n - len(self.invalid)


def check_embeddings(embed_dir: Path, manifest: dict) -> CheckedEmbeddings:
    """The embed directory's embeddings checked (invalid_captions); PrepError for parts that are not what its
    manifest says. They are mapped only while this runs: the check reads every page of them, and the pages of a
    mapping count in the driver's RSS while it lives (the whole fp16 embeddings, 2.3 GB at 3M captions)."""
    try:
        rows = EmbeddingRows(embed_dir, manifest)
    except EmbedDirError as e:
        raise PrepError(str(e)) from e
    return CheckedEmbeddings(rows.n, rows.dim, invalid_captions(rows))


def invalid_captions(rows: EmbeddingRows) -> np.ndarray:
    """Ids of captions whose embedding is not finite or whose norm is off 1 by more than NORM_TOLERANCE. Runs on
    the driver in blocks of VALIDITY_BLOCK rows: at most VALIDITY_BLOCK * D * 9 bytes (the float32 block, its
    squares for the norm, the finiteness mask), 113 MB at D = 384."""
    bad = []
    for start in range(0, rows.n, VALIDITY_BLOCK):
        block = rows.block(start, min(rows.n, start + VALIDITY_BLOCK))
        with np.errstate(invalid="ignore", over="ignore"):
            ok = np.isfinite(block).all(axis=1) & (np.abs(np.linalg.norm(block, axis=1) - 1) <= NORM_TOLERANCE)
        bad.append(start + np.flatnonzero(~ok))
    return np.concatenate(bad).astype(np.int64) if bad else np.empty(0, dtype=np.int64)


def _resolve_k(requested: int | None, valid: int) -> int:
    """k for `valid` captions with valid embeddings: `requested`, else min(DEFAULT_K, valid - 1). PrepError when
    valid < 2, or when requested >= valid."""
    if valid < 2:
        raise PrepError(f"a caption graph needs at least 2 unique captions with valid embeddings, this one has {valid}")
    if requested is None:
        return min(DEFAULT_K, valid - 1)
    if requested >= valid:
        raise PrepError(f"--k {requested} needs more than {requested} unique captions, there are {valid} "
                        f"(use --k {valid - 1} or less, or omit --k to use min({DEFAULT_K}, U - 1))")
    return requested


def _resolve_method(requested: str, device: str, n: int, dim: int) -> str:
    """`requested`, or for ``auto`` the method `auto_method` picks for n rows of `dim` on `device`, given the
    memory of the smallest live Ray node."""
    if requested != "auto":
        return requested
    smallest = min(node["Resources"].get("memory", 0) for node in ray.nodes() if node["Alive"])
    return auto_method(device, n, dim, smallest)


def _corpus_plan(embed_dir: Path) -> Plan:
    """The corpus files `embed_dir` was embedded from, with the identities its PLAN recorded (none when it has no
    PLAN). PrepError, naming each, when one changed since: the images are read from them, so a tar replaced since
    embed would give wrong or missing images under done markers."""
    corpus = Plan((read_plan(embed_dir) or Plan(None, None)).inputs, None)
    if changed := input_changes(corpus, corpus.now()):
        raise PrepError(f"the corpus of {embed_dir} changed since it was embedded: {'; '.join(changed)}; put it back "
                        f"as it was, or embed it again")
    return corpus


def run_graph(opts: GraphOptions) -> dict:
    """Run (or resume) the graph stage; return the shards manifest. Raises PrepError on bad input or options (the
    embed directory, or the corpus files it names, changed since the run started or embed ran), or a full disk.
    The caller holds OUT's lock (`xclr_schemas.out_lock`)."""
    t0 = time.perf_counter()
    try:
        embed_manifest = read_manifest(opts.embed_dir)
    except EmbedDirError as e:
        raise PrepError(str(e)) from e
    embed = InputIdentity.of_dir(opts.embed_dir)
    with no_space_as_error(opts.out):
        refuse_changed_inputs(opts.out, Plan((embed,), None))  # at once, before the embeddings are read
        corpus = _corpus_plan(opts.embed_dir)
        emb = check_embeddings(opts.embed_dir, embed_manifest)
        k = _resolve_k(opts.k, emb.valid)
        start_ray(opts.ray_address)
        try:
            graph_dir, graph_plan = _graph_plan(opts, k, embed.manifest_sha256, emb)
            plan = _plan(embed, graph_plan, SHARDS_SCHEMA_VERSION, graph_dir=str(graph_dir),
                         shards=asdict(opts.shards))
            hint = f"use another --out (to re-pack with other shard options, pass --graph {opts.out}/graph)"
            if claim_dir(opts.out, plan, "shards", "shards", hint):
                print(f"{opts.out} is already complete")
                return json.loads((opts.out / MANIFEST).read_text())
            remove_temporaries(opts.out)
            require_shared([str(opts.out / PLAN), str(opts.embed_dir / MANIFEST)]
                           + ([str(graph_dir / MANIFEST)] if opts.graph else []))
            if opts.graph is None:
                graph_manifest = _build_graph(opts, graph_dir, graph_plan, embed, corpus, embed_manifest, emb)
            else:
                graph_manifest = load_graph(graph_dir).manifest
            manifest = _build_shards(opts, graph_dir, graph_manifest, embed_manifest, embed.manifest_sha256, emb)
        finally:
            ray.shutdown()
        manifest["seconds"] = round(time.perf_counter() - t0, 2)
        remove_temporaries(opts.out)  # of writers that died with their node while others finished their units
        require_unchanged(opts.out, plan)
        require_unchanged(opts.out, corpus)
        write_json_atomic(opts.out / SIZES, {s["name"]: s["samples"] for s in manifest["shards"]})
        write_json_atomic(opts.out / MANIFEST, manifest)
    return manifest


def _plan(embed: InputIdentity, graph_plan: GraphPlan, schema_version: int, **options: object) -> Plan:
    """The plan (`xclr_prep.fsutil`) of a directory made from the embed directory `embed` by a graph of
    `graph_plan`, with further `options`: the embed directory is the input, the rest are options."""
    graph = {k: v for k, v in asdict(graph_plan).items() if k != "embed_manifest_sha256"}
    return Plan((embed,), {"graph": graph, **options}, schema_version)


def _graph_plan(opts: GraphOptions, k: int, embed_sha: str, emb: CheckedEmbeddings) -> tuple[Path, GraphPlan]:
    """Where the graph is and its plan: OUT/graph searched with the options' method (auto resolved on the running
    Ray), or the complete graph ``--graph`` reuses."""
    if opts.graph is not None:
        return opts.graph, _reused_graph_plan(opts.graph, embed_sha)
    device = cluster_device(opts.device)
    method = _resolve_method(opts.method, device, emb.valid, emb.dim)
    record = METHODS[method]
    recipe = record.recipe(emb.valid, emb.dim, record.engine(device, knn.faiss_gpu_build()))
    return opts.out / GRAPH, GraphPlan(GRAPH_SCHEMA_VERSION, embed_sha, k, method, opts.recall_target,
                                       opts.block_size, device, opts.search_seed or 0, recipe)


def _reused_graph_plan(graph_dir: Path, embed_sha: str) -> GraphPlan:
    """The plan of the complete graph `graph_dir` (``--graph``); PrepError when it is no complete graph or was
    computed from an embed directory whose manifest digest is not `embed_sha`."""
    try:
        manifest = load_graph(graph_dir).manifest
    except GraphDirError as e:
        raise PrepError(str(e)) from e
    if manifest["plan"]["embed_manifest_sha256"] != embed_sha:
        raise PrepError(f"--graph {graph_dir} was computed from another embed directory")
    return GraphPlan(**manifest["plan"])


def _build_graph(opts: GraphOptions, graph_dir: Path, plan: GraphPlan, embed: InputIdentity, corpus: Plan,
                 embed_manifest: dict, emb: CheckedEmbeddings) -> dict:
    """Search (or resume) the graph of `plan` in `graph_dir`; its manifest, written only while the embed directory
    and its `corpus` are as the run found them."""
    dir_plan = _plan(embed, plan, GRAPH_SCHEMA_VERSION)
    if claim_dir(graph_dir, dir_plan, "graph", "a graph", "use another --out"):
        return load_graph(graph_dir).manifest
    started = time.perf_counter()
    create_neighbors_file(graph_dir, emb.n, plan.k)
    device = plan.device
    n, cpus, gpus = pool_shape(device, opts.num_workers, opts.gpus_per_worker, None)
    actors = start_pool(SearchWorker, n, cpus, gpus, str(opts.embed_dir), str(graph_dir), plan, emb.invalid, device,
                        cpus)
    result = search_graph(actors, graph_dir, emb.n, opts.block_size, plan.method, plan.seed,
                          opts.recall_target, opts.progress)
    for actor in actors:
        ray.kill(actor)
    recall = result["recall"]["measured"]
    if recall < opts.recall_target and not opts.allow_low_recall:
        raise PrepError(f"recall@{plan.k} of the {plan.method} graph is {recall:.4f}, below --recall-target "
                        f"{opts.recall_target} (rerun with --index exact, a lower --recall-target, or "
                        f"--allow-low-recall to keep it)")
    manifest = {
        "schema_version": GRAPH_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "fingerprint": json_digest(asdict(plan)),
        "embed_dir": str(opts.embed_dir),
        "model": embed_manifest["model"],
        "captions": emb.n,
        "k": plan.k,
        "method": plan.method,
        "recall_target": opts.recall_target,
        "invalid_captions": {"count": len(emb.invalid), "ids": emb.invalid[:100].tolist()},
        **result,
        "run": {"workers": n, "device": device, "cpus_per_worker": cpus, "gpus_per_worker": gpus,
                "seconds": round(time.perf_counter() - started, 2)},
    }
    require_unchanged(graph_dir, dir_plan)
    require_unchanged(graph_dir, corpus)
    write_json_atomic(graph_dir / MANIFEST, manifest)
    return manifest


def _build_shards(opts: GraphOptions, graph_dir: Path, graph_manifest: dict, embed_manifest: dict, embed_sha: str,
                  emb: CheckedEmbeddings) -> dict:
    """Write (or resume) the shards of OUT from the graph in `graph_dir`; their manifest (not yet written). Every
    sample is written or skipped with its reason (written + skipped = the embed directory's kept samples);
    PrepError when none could be written."""
    caption_ok = np.ones(emb.n, dtype=bool)
    caption_ok[emb.invalid] = False
    n, cpus, _ = pool_shape("cpu", opts.num_workers, 0, 1)  # one shard writer per CPU
    parts = EmbedParts.of(embed_manifest)
    actors = start_pool(ShardWorker, n, cpus, 0, str(opts.embed_dir), str(graph_dir), str(opts.out), parts,
                        opts.shards.with_embeddings, cpus)
    result = run_shards(actors, opts.out, opts.embed_dir, parts, caption_ok, load_graph(graph_dir).neighbors["id"],
                        graph_manifest["k"], emb.dim, opts.shards, opts.progress)
    skipped = result["skipped"]
    kept = embed_manifest["counts"]["kept"]
    if result["written"] + sum(skipped.values()) != kept:
        raise RuntimeError(f"count mismatch: {kept} samples in, {result['written']} written, {skipped} skipped")
    if not result["written"]:
        raise PrepError(f"no sample could be written: {kept} samples, all skipped ({json.dumps(skipped)})")
    graph = {key: graph_manifest[key] for key in ("k", "method", "recall", "background_similarity",
                                                   "kth_similarity_mean", "fingerprint")}
    return {
        "schema_version": SHARDS_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "embed": {"path": str(opts.embed_dir), "manifest_sha256": embed_sha},
        "model": embed_manifest["model"],
        "classnames": embed_manifest.get("classnames"),
        "graph": {"path": str(graph_dir), **graph},
        "options": asdict(opts.shards),
        "counts": {"samples_in": kept, "written": result["written"], "skipped": skipped,
                   "skipped_total": sum(skipped.values()), "shards": len(result["shards"])},
        "skipped_examples": {"image_undecodable": result["undecodable"][:20]},
        "groups": result["groups"],
        "shards": result["shards"],
        "run": {"workers": n, "cpus_per_worker": cpus, **result["timing"]},
    }
