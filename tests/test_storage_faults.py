"""Transient storage errors, short reads and a store that is down (issue 34), on the test store ``flaky://``
(tests/flaky_store.py): the whole pipeline on URLs, every stage run on a store that fails a fraction of its calls and
cuts a fraction of its reads short, retries (xclr_schemas.retry) and ends with what a clean run on local paths
writes; on a store that is down, each command gives one line naming the URL after the retry bound, not a hang."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict

import flaky_store
import fsspec
import pytest
import torch
from fault_ledger import passes
from flaky_store import Settings
from prep_helpers import TUX_GRAPH_ARGS, run_prep
from train_helpers import assert_same_state, train_in_process, train_metrics, untimed

from xclr_schemas import load_embed_dir, retry, storage

SEED = os.environ.get("XCLR_FAULT_SEED", "storage")
FLAKY = {"fail": 0.05, "short": 0.03}  # of the store's calls, of its reads
RETRIED = re.compile(r"xclr storage: (\d+) transient errors and (\d+) short reads retried")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    return flaky_store.write_plugin(tmp_path_factory.mktemp("flaky-plugin"))


@pytest.fixture
def use_store(monkeypatch, tmp_path):
    """Configure the store for this process (its commands run in-process) and a work directory of the test's."""
    monkeypatch.setenv("XCLR_WORK_DIR", str(tmp_path / "work"))

    def use(settings: Settings) -> Settings:
        monkeypatch.setitem(fsspec.config.conf, flaky_store.PROTOCOL, asdict(settings))
        return settings

    return use


def retried(stderr: str) -> int:
    """Retries that the processes of a command reported at their exit (the command's and its actors' lines)."""
    return sum(int(a) + int(b) for a, b in RETRIED.findall(stderr))


def test_reads_and_copies_through_a_flaky_store_are_whole(tmp_path, use_store):
    data = os.urandom(5 * flaky_store.BLOCK)
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "blob").write_bytes(data)
    settings = use_store(Settings(str(tmp_path / "faults.log"), fail=0.07, short=0.2, seed=SEED))
    url = flaky_store.url(tmp_path / "d")
    before = retry.counts()

    assert storage.find_files(url) == [f"{url}/e/blob"]
    with storage.open_input(f"{url}/e/blob") as f:
        assert b"".join(iter(lambda: f.read(100_000), b"")) == data
        f.seek(-5, os.SEEK_END)
        assert f.read() == data[-5:]
    assert all(storage.read_range(f"{url}/e/blob", i * 9_000, 10_000) == data[i * 9_000:i * 9_000 + 10_000]
               for i in range(40))
    storage.pull(url, tmp_path / "copy")
    assert (tmp_path / "copy" / "e" / "blob").read_bytes() == data

    after, faults = retry.counts(), flaky_store.injected(settings)
    assert faults["transient"] > 0 and faults["short read"] > 0, faults
    # every transient error was retried; a short read was, or the transient error of the size check after it was
    assert after.transient - before.transient == faults["transient"]
    assert 0 < after.short_reads - before.short_reads <= faults["short read"]


def test_a_storage_error_relayed_with_its_traceback_keeps_one_line():
    """torch re-raises a DataLoader worker's error as its type, with the worker's traceback as its message."""
    relayed = ("Caught StorageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nxclr_schemas.retry.StorageError: flaky:///b/s.tar: the store failed')
    assert retry.StorageError(relayed).message == "flaky:///b/s.tar: the store failed"
    assert retry.is_transient(flaky_store.SlowDown()) and retry.is_transient(ConnectionResetError())
    assert not retry.is_transient(FileNotFoundError()) and not retry.is_transient(OSError(28, "No space left"))


def equal_embed_dirs(ours, theirs, url: str) -> None:
    assert ours.captions == theirs.captions and (ours.embeddings == theirs.embeddings).all()
    assert ours.manifest["counts"] == theirs.manifest["counts"]
    assert ours.samples.drop(["image_source"]).equals(theirs.samples.drop(["image_source"]))
    assert all(s.startswith(url) for s in ours.samples.column("image_source").to_pylist())


def equal_shards(ours, theirs) -> None:
    tars = sorted(p.name for p in theirs.glob("*.tar"))
    assert sorted(p.name for p in ours.glob("*.tar")) == tars
    assert all((ours / t).read_bytes() == (theirs / t).read_bytes() for t in tars)
    assert (ours / "sizes.json").read_text() == (theirs / "sizes.json").read_text()


def run_cli(module: str, *args, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, f"{module} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_the_pipeline_on_a_flaky_store_equals_the_pipeline_on_local_paths(tux_embed, tux_shards, plugin, tmp_path,
                                                                         fault_ledger):
    """embed -> graph -> train -> (resume on another machine) -> eval, every input and output a URL of a store that
    fails a fraction of its calls and cuts reads short. embed's actors stream the corpus tars, graph's read each
    image with a ranged read, every stage publishes its output through the store: the embed directory and the
    shards equal the local run's; a second machine (a fresh work directory) resumes the killed run from what the
    first published."""
    from xclr_train.checkpoint import read_checkpoint

    bucket = tmp_path / "bucket"
    shutil.copytree(tux_embed / "tars", bucket / "corpus")
    url = flaky_store.url(bucket)
    settings = Settings(str(tmp_path / "faults.log"), **FLAKY, seed=SEED)
    machine_a = {**os.environ, **flaky_store.env(settings, plugin), "XCLR_WORK_DIR": str(tmp_path / "work-a")}

    injected, ok = {}, {}
    for stage, args, out, check in [
            ("embed", (f"{url}/corpus", "--label-col", "label", "--no-progress"), "embed",
             lambda: equal_embed_dirs(load_embed_dir(bucket / "embed"), load_embed_dir(tux_embed / "embed"),
                                      f"{url}/corpus/")),
            ("graph", (f"{url}/embed", *TUX_GRAPH_ARGS), "shards",
             lambda: equal_shards(bucket / "shards", tux_shards))]:
        before = flaky_store.injected(settings)
        proc = run_prep(stage, *args, "--out", f"{url}/{out}", env=machine_a)
        injected[stage] = faults = flaky_store.injected(settings) - before
        ok[stage] = passes(check) and retried(proc.stderr) > 0 and faults["transient"] > 0
        fault_ledger.record("transient storage error",
                            f"{stage}: {faults['transient']} transient errors injected (in the command and its "
                            "actors), retried; output equal to the clean run's", survived=ok[stage])
        assert ok[stage], (faults, proc.stderr[-3000:])
    cut = [stage for stage, faults in injected.items() if faults["short read"]]
    fault_ledger.record("short read", f"{', '.join(cut)}: {sum(f['short read'] for f in injected.values())} reads cut "
                                      "short, read again; outputs equal to clean runs'", injected=len(cut),
                        survived=all(ok[stage] for stage in cut))
    assert cut, injected

    # machine A is killed once it has published its first checkpoint; machine B resumes from the bucket
    train = ["--data", f"{url}/shards", "--out", f"{url}/run", "--arch", "convnet", "--image-size", "16",
             "--batch-size", "16", "--samples-per-epoch", "64", "--epochs", "3", "--no-progress", "--log-every", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "xclr_train", *train], env=machine_a,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    published = bucket / "run" / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 600
    while not published.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_checkpoint(published)["step"] < 12, "the run ended before it could be killed"
    run_cli("xclr_train", *train, "--resume", "latest", env={**machine_a, "XCLR_WORK_DIR": str(tmp_path / "work-b")})
    steps = [json.loads(line)["step"] for line in (bucket / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # resumed from the published checkpoint: nothing repeated, nothing lost

    run_cli("xclr_eval", f"{url}/run/checkpoints/latest.pt", "--data", f"{url}/corpus", "--out", f"{url}/eval",
            "--no-linear-probe", "--no-clustering", env=machine_a)
    results = json.loads((bucket / "eval" / "results.json").read_text())
    pngs = sum(name.endswith(".png") for t in (bucket / "corpus").glob("*.tar") for name in tarfile.open(t).getnames())
    assert results["runs"]["run"]["step"] == 12 and results["images"] == pngs
    assert (bucket / "eval" / "plots" / "training-run.png").is_file()


@pytest.mark.slow
def test_training_on_a_flaky_store_equals_the_clean_run(trained_run, tux_shards, tmp_path, use_store, fault_ledger):
    """--data streams the shards (a DataLoader worker reads the tars), --out publishes the run and its checkpoints
    through the store: the same weights and metrics as the session's run on local paths, bit for bit."""
    whole = trained_run("convnet")
    shutil.copytree(tux_shards, tmp_path / "bucket" / "shards")
    url = flaky_store.url(tmp_path / "bucket")
    settings = use_store(Settings(str(tmp_path / "faults.log"), **FLAKY, seed=SEED))
    args = list(whole.args)
    args[args.index("--data") + 1] = f"{url}/shards"
    before = retry.counts()
    threads = torch.get_num_threads()
    torch.set_num_threads(whole.threads)
    try:
        train_in_process(*args, "--out", f"{url}/run")
    finally:
        torch.set_num_threads(threads)
    faults, after = flaky_store.injected(settings), retry.counts()
    here = flaky_store.injected(settings, os.getpid())  # the rest: in the DataLoader worker

    def same_run() -> None:
        ours = torch.load(tmp_path / "bucket" / "run" / "checkpoints" / "latest.pt", weights_only=True)
        theirs = torch.load(whole.dir / "checkpoints" / "latest.pt", weights_only=True)
        for key in ("model", "method", "optimizer", "skipped", "step", "epoch"):
            assert_same_state(ours[key], theirs[key], key)
        assert untimed(train_metrics(tmp_path / "bucket" / "run")) == untimed(train_metrics(whole.dir))
        assert not (tmp_path / "bucket" / "run" / ".lock").exists()  # the output lock stays in the work directory

    # every transient error injected in this process was retried and counted; the worker's were retried, or the
    # run would differ
    survived = passes(same_run) and after.transient - before.transient == here["transient"] and faults["transient"] > 0
    fault_ledger.record("transient storage error",
                        f"train: {faults['transient']} transient errors and {faults['short read']} short reads "
                        "injected (shards streamed, run published), retried; the same weights and metrics as the "
                        "clean run", survived=survived)
    assert survived, faults


BOUND = 0.3  # seconds, XCLR_STORAGE_RETRY_SECONDS of the test


@pytest.mark.slow  # over 3 s alone: four retry bounds, and the imports of the three command lines
def test_a_store_that_is_down_stops_each_command_with_one_line(tmp_path, use_store, monkeypatch, fault_ledger,
                                                               capsys):
    """Each command, in this process, on a store that fails every call: exit status 2 and one "Error:" line that
    names the URL, once it has retried for the bound (XCLR_STORAGE_RETRY_SECONDS) and not much longer."""
    from xclr_eval.cli import main as xclr_eval
    from xclr_prep.cli import main as xclr_prep
    from xclr_train.cli import main as xclr_train

    monkeypatch.setenv(retry.RETRY_SECONDS_VAR, str(BOUND))
    settings = use_store(Settings(str(tmp_path / "faults.log"), down=""))
    url = flaky_store.url(tmp_path / "bucket")
    prep = lambda args: _prep(xclr_prep, args, capsys)  # noqa: E731
    commands = {  # name: (run, arguments, the URL its error names: the first the command uses)
        "xclr-prep embed": (prep, ["embed", f"{url}/corpus", "--out", tmp_path / "e"], f"{url}/corpus"),
        "xclr-prep graph": (prep, ["graph", f"{url}/embed", "--out", f"{url}/g"], f"{url}/embed"),
        "xclr-train": (lambda args: _click(xclr_train, args), ["--data", f"{url}/shards", "--out", f"{url}/t"],
                       f"{url}/t"),
        "xclr-eval": (lambda args: _click(xclr_eval, args),
                      [f"{url}/run/checkpoints/latest.pt", "--data", f"{url}/corpus", "--out", f"{url}/v"],
                      f"{url}/corpus"),
    }
    ended = {}
    for name, (run, args, named) in commands.items():
        status, lines = run([str(a) for a in args])
        ended[name] = lines
        said = "xclr-prep: error: " if name.startswith("xclr-prep") else "Error: "  # each command's one-line form
        assert status == 2 and len(lines) == 1 and lines[0].startswith(f"{said}{named}: the store failed"), \
            (name, status, lines)

    def retried_for_the_bound() -> None:
        """Each command retried (more than one try) for the bound before it gave up, by its own account."""
        for name, lines in ended.items():
            tries, seconds = re.search(r"the store failed (\d+) tries in ([\d.]+) s", lines[0]).groups()
            assert int(tries) > 1 and float(seconds) >= BOUND, (name, lines)

    faults = flaky_store.injected(settings)
    fault_ledger.record("store down", f"each of {', '.join(commands)} on a store that is down: one line naming the "
                                      f"URL after the {BOUND} s bound ({faults['down']} calls refused)",
                        injected=len(commands), survived=passes(retried_for_the_bound))
    retried_for_the_bound()


def _prep(main, args: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


def _click(main, args: list[str]) -> tuple[int, list[str]]:
    from click.testing import CliRunner

    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stderr.strip().splitlines()


def test_a_shard_store_that_goes_down_under_a_dataloader_worker_stops_training_with_one_line(tux_shards, tmp_path,
                                                                                            use_store, monkeypatch,
                                                                                            fault_ledger):
    """The store opens a shard once, for the command's look at its first sample, and no more when the DataLoader
    worker streams it: the worker's error comes back to the command as the same one line, naming the shard."""
    monkeypatch.setenv(retry.RETRY_SECONDS_VAR, str(BOUND))
    settings = use_store(Settings(str(tmp_path / "faults.log"), down=".tar", down_calls=("_open",), down_after=1))
    shards = tmp_path / "bucket" / "shards"
    shards.mkdir(parents=True)
    shard = sorted(tux_shards.glob("*.tar"))[0]
    shutil.copy(shard, shards)
    (shards / "sizes.json").write_text(json.dumps({shard.name: json.loads((tux_shards / "sizes.json").read_text())[
        shard.name]}))
    url = flaky_store.url(shards)
    result = train_in_process("--data", url, "--out", tmp_path / "run", "--loss", "simclr", "--arch", "convnet",
                              "--image-size", "16", "--batch-size", "8", "--steps", "1", "--workers", "1",
                              "--no-progress", check=False)
    lines = result.stderr.strip().splitlines()
    refused, here = flaky_store.injected(settings)["down"], flaky_store.injected(settings, os.getpid())["down"]

    def one_line() -> None:
        assert result.exit_code == 2 and len(lines) == 1, result.stderr[-3000:]
        assert lines[0].startswith(f"Error: {url}/{shard.name}: the store failed"), lines
        assert refused > 0 and here == 0, (refused, here)  # refused to the worker only

    fault_ledger.record("store down", f"train: the shards' store down under a DataLoader worker ({refused} calls "
                                      "refused): one line naming the shard", survived=passes(one_line))
    one_line()
