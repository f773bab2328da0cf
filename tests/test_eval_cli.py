"""`xclr-eval` end to end: a real trained checkpoint, the real tuxpaint stamps and Fashion-MNIST, real tars."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner, Result
from data_helpers import write_tar
from PIL import Image

from xclr_eval.cli import main as eval_command
from xclr_schemas.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, idx_files, read_idx

pytestmark = pytest.mark.slow  # whole commands end to end (the fast lane, -m "not slow", leaves them out)

METRICS = {"knn_accuracy", "linear_probe_accuracy", "precision@1", "precision@10", "recall@10", "mAP", "kmeans_ari",
           "kmeans_nmi", "silhouette", "davies_bouldin", "dunn", "semantic_alignment"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_eval(*args, check: bool = True) -> Result:
    """`xclr-eval ARGS` in this process (click's runner); test_bad_inputs_give_one_line_errors also runs it as a
    real command."""
    result = CliRunner().invoke(eval_command, [*map(str, args)])
    if check and result.exit_code != 0:
        raise AssertionError(f"xclr-eval failed ({result.exit_code}):\n{result.output[-4000:]}") from result.exception
    return result


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, (result.output[-2000:], result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def run(trained_run):
    """The session's X-CLR run of the small CNN (conftest.trained_run: latest.pt, epoch-000N.pt)."""
    return trained_run("convnet").dir


def test_tuxpaint_tars_all_metrics_plots_and_two_checkpoints(run, tux_embed, tmp_path):
    """Every metric, plot and table for two checkpoints; every stamp with an image and a label is evaluated (the
    count equals the tars' PNG members)."""
    tars = tux_embed / "tars"
    out = tmp_path / "ev"
    proc = run_eval(run / "checkpoints" / "latest.pt", run / "checkpoints" / "epoch-0001.pt", "--data", tars,
                    "--out", out)
    results = json.loads((out / "results.json").read_text())
    classnames = (tars / "classnames.txt").read_text().split()
    assert results["classnames"] == classnames
    assert set(results["runs"]) == {"tux-xclr", "tux-xclr-epoch-0001"}
    for name, r in results["runs"].items():
        assert set(r["metrics"]) == METRICS
        assert all(np.isfinite(v) for v in r["metrics"].values())
        assert 0 <= r["metrics"]["knn_accuracy"] <= 1 and -1 <= r["metrics"]["semantic_alignment"] <= 1
        assert r["images"] == results["images"] and r["skipped_undecodable_image"] == 0
        sim = np.array(r["class_similarity"]["learned"])
        assert sim.shape == (len(classnames),) * 2 and np.allclose(np.diag(sim), 1, atol=1e-4)
        assert (out / "plots" / f"similarity-{name}.png").read_bytes()[:8] == PNG_MAGIC
        assert (out / "plots" / f"training-{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert results["runs"]["tux-xclr"]["step"] == 4 and results["runs"]["tux-xclr-epoch-0001"]["step"] == 2
    assert (out / "plots" / "compare.png").read_bytes()[:8] == PNG_MAGIC
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| tux-xclr | xclr | 4 |")
    assert "results:" in proc.stdout
    pngs = sum(name.endswith(".png") for t in tars.glob("*.tar") for name in tarfile.open(t).getnames())
    assert results["images"] == pngs > 700


def test_fashion_mnist_idx_and_saved_features(run, tmp_path):
    npz = tmp_path / "features.npz"
    run_eval(run / "checkpoints" / "latest.pt", "--data", FASHION_MNIST_DIR, "--limit", 400, "--out", tmp_path / "ev",
             "--save-features", npz, "--no-clustering", "--no-linear-probe")
    saved = np.load(npz)
    _, labels = read_idx(*idx_files(FASHION_MNIST_DIR, "test"))
    assert saved["features"].shape == (400, 256) and saved["features"].dtype == np.float32
    np.testing.assert_array_equal(saved["labels"], labels[:400])
    assert saved["classnames"].tolist() == list(FASHION_MNIST_CLASSES)
    assert np.isfinite(saved["features"]).all() and saved["features"].std(0).max() > 0


def test_image_folder_counts_undecodable_images(run, tmp_path):
    images, labels = read_idx(*idx_files(FASHION_MNIST_DIR, "test"))
    root = tmp_path / "folder"
    for i in range(120):
        folder = root / FASHION_MNIST_CLASSES[labels[i]].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i}.png")
    (root / "Bag" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "ev"
    run_eval(run / "checkpoints" / "latest.pt", "--data", root, "--out", out, "--no-clustering", "--no-linear-probe")
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 121 and results["runs"]["tux-xclr"]["images"] == 120
    assert results["runs"]["tux-xclr"]["skipped_undecodable_image"] == 1
    left_out = {"linear_probe_accuracy", "kmeans_ari", "kmeans_nmi", "silhouette", "davies_bouldin", "dunn"}
    assert not left_out & set(results["runs"]["tux-xclr"]["metrics"])  # --no-linear-probe, --no-clustering
    assert results["classnames"] == sorted(p.name for p in root.iterdir())


def test_shards_without_labels_are_counted_and_class_names_required(run, tmp_path):
    def png(i):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (30 * i % 255, 0, 0)).save(buf, format="PNG")
        return buf.getvalue()

    members = []
    for i in range(12):
        members.append((f"{i:04d}.png", png(i)))
        if i != 5:
            members.append((f"{i:04d}.json", json.dumps({"label": i % 3}).encode()))
    members.append(("0099.json", b'{"label": 1}'))
    data = tmp_path / "shards"
    data.mkdir()
    write_tar(data / "000.tar", members)
    assert "no class names" in one_line_error(run_eval(run / "checkpoints" / "latest.pt", "--data", data,
                                                       "--out", tmp_path / "ev", check=False))
    names = tmp_path / "names.txt"
    names.write_text("red\ngreen\nblue\n")
    run_eval(run / "checkpoints" / "latest.pt", "--data", data, "--classnames", names, "--out", tmp_path / "ev")
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["images"] == 11 and results["skipped"] == {"no_label": 1, "no_image": 1}
    names.write_text("red\ngreen\n")
    assert "only 2 class names" in one_line_error(run_eval(run / "checkpoints" / "latest.pt", "--data", data,
                                                           "--classnames", names, "--out", tmp_path / "e2",
                                                           check=False))


def test_held_out_queries_against_a_database_of_other_vendors(run, tmp_path):
    """The emoji protocol: google + twitter images are the database, openmoji's the queries, subcategory the primary
    label and category a further one. Queries of classes the database lacks are skipped and counted."""
    from xclr_prep.sample_corpora import write_emoji_tars

    write_emoji_tars(tmp_path / "db", ("google", "twitter"), every=40)
    write_emoji_tars(tmp_path / "q", ("openmoji",), every=20)
    db = [json.loads(m) for v in ("google", "twitter") for m in tar_members(tmp_path / "db" / v, ".json")]
    queries = [json.loads(m) for m in tar_members(tmp_path / "q" / "openmoji", ".json")]
    subcategories = {m["subcategory"] for m in db}
    unknown = sum(m["subcategory"] not in subcategories for m in queries)
    assert 0 < unknown < len(queries)
    out = tmp_path / "ev"
    tars = ",".join(str(t) for v in ("google", "twitter") for t in sorted((tmp_path / "db" / v).glob("*.tar")))
    proc = run_eval(run / "checkpoints" / "latest.pt", "--data", "{" + tars + "}", "--queries",
                    tmp_path / "q" / "openmoji", "--label-field", "subcategory", "--label-field", "category",
                    "--out", out)
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == len(db) and results["query_images"] == len(queries) - unknown
    assert results["query_skipped"] == {"class_not_in_database": unknown}
    assert results["classnames"] == sorted(subcategories)
    metrics = results["runs"]["tux-xclr"]["metrics"]
    extra = {"knn_accuracy@category", "linear_probe_accuracy@category", "caption_R@1", "caption_R@5",
             "caption_alignment"}
    assert set(metrics) == METRICS | extra and all(np.isfinite(v) for v in metrics.values())
    assert 0 <= metrics["caption_R@1"] <= metrics["caption_R@5"] <= 1
    assert (out / "plots" / "nearest.png").read_bytes()[:8] == PNG_MAGIC
    header = (out / "results.md").read_text().splitlines()[0]
    assert "kNN category" in header and "caption R@5" in header and "caption R@1" in proc.stdout


def tar_members(folder, suffix: str) -> list[bytes]:
    members = []
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            members += [tar.extractfile(m).read() for m in tar if m.name.endswith(suffix)]
    return members


def test_bad_inputs_give_one_line_errors(run, tmp_path):
    ckpt = run / "checkpoints" / "latest.pt"
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_bytes(b"garbage")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "no checkpoint at": [tmp_path / "missing.pt", "--data", FASHION_MNIST_DIR],
        "not a readable xclr checkpoint": [not_ckpt, "--data", FASHION_MNIST_DIR],
        "is not an evaluation set": [ckpt, "--data", empty],
        "has no {} for the class name": [ckpt, "--data", FASHION_MNIST_DIR, "--template", "a photo"],
        "--save-features takes one checkpoint": [ckpt, ckpt.parent / "epoch-0001.pt", "--data", FASHION_MNIST_DIR,
                                                 "--save-features", tmp_path / "f.npz"],
        "would share a name": [ckpt, ckpt, "--data", FASHION_MNIST_DIR],
        "--label-field is for WebDataset tars": [ckpt, "--data", FASHION_MNIST_DIR, "--label-field", "category"],
    }
    for message, args in cases.items():  # in-process; the first also as a real command
        assert message in one_line_error(run_eval(*args, "--out", tmp_path / "ev", check=False)), message
    message, args = next(iter(cases.items()))
    proc = subprocess.run([sys.executable, "-m", "xclr_eval", *map(str, args), "--out", str(tmp_path / "ev")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]


def test_string_label_fields_name_their_classes_and_align_by_name(tmp_path):
    """In-process: a string field's classes are its sorted values; a query set is re-expressed in the database's
    class names; --classnames on a string field and a field mixing integers and strings are one-line errors."""
    from xclr_train.evalsets import EvalSetError, align, load_eval_set

    def tars(folder, kinds):
        folder.mkdir()
        members = []
        for i, kind in enumerate(kinds):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (20 * i % 255, 0, 0)).save(buf, format="PNG")
            members += [(f"{i:04d}.png", buf.getvalue()), (f"{i:04d}.txt", f"caption {i}".encode()),
                        (f"{i:04d}.json", json.dumps({"kind": kind, "size": i % 2}).encode())]
        write_tar(folder / "000.tar", members)
        return str(folder)

    db = load_eval_set(tars(tmp_path / "db", ["pear", "apple", "pear", "fig"]), label_fields=("kind", "size"))
    assert db.classnames == ["apple", "fig", "pear"] and db.labels.tolist() == [2, 0, 2, 1]
    assert db.more_labels["size"].tolist() == [0, 1, 0, 1] and db.captions[1] == "caption 1"
    queries = load_eval_set(tars(tmp_path / "q", ["fig", "plum", "apple"]), label_fields=("kind", "size"))
    aligned = align(queries, db)
    assert aligned.labels.tolist() == [1, 0] and aligned.classnames == db.classnames
    assert aligned.captions == ["caption 0", "caption 2"] and aligned.skipped == {"class_not_in_database": 1}
    with pytest.raises(EvalSetError, match="--classnames is for integer labels"):
        load_eval_set(str(tmp_path / "db"), tmp_path / "names.txt", label_fields=("kind",))
    with pytest.raises(EvalSetError, match="mixes integers and strings"):
        load_eval_set(tars(tmp_path / "mixed", ["a", 3, "b"]), label_fields=("kind",))
