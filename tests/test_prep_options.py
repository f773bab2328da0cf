"""xclr-prep's options are defined once (xclr_prep.options): the command line is generated from the dataclasses, and
a bad value is one line naming the option when the dataclass is built, before any work (in-process: no Ray)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

from xclr_prep.cli import cli, main
from xclr_prep.corpus import CorpusSpec
from xclr_prep.errors import PrepError
from xclr_prep.options import EmbedOptions, GraphOptions, ShardOptions
from xclr_schemas.options import is_option, option_flag

HERE = Path(".")


def run(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """xclr-prep ARGS in this process, as the console script runs it: (exit code, last line of stderr)."""
    monkeypatch.setattr("sys.argv", ["xclr-prep", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("command, classes", [("embed", (CorpusSpec, EmbedOptions)),
                                              ("graph", (GraphOptions, ShardOptions))])
def test_every_option_field_is_an_option_of_its_command_with_its_default_and_help(command, classes):
    params = {p.name: p for p in cli.commands[command].params}
    for cls in classes:
        for f in filter(is_option, fields(cls)):
            param = params[f.name]
            assert option_flag(f) in param.opts and param.default == f.default and param.help == f.metadata["help"]


@pytest.mark.parametrize("args, message", [
    (["embed", "c.tsv", "--out", "o", "--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["embed", "c.tsv", "--out", "o", "--part-size", "-1"], "--part-size must be positive, got -1"),
    (["embed", "c.tsv", "--out", "o", "--num-workers", "0"], "--num-workers must be positive, got 0"),
    (["embed", "c.tsv", "--out", "o", "--template", "a {"], "--template must contain {}"),
    (["embed", "c.tsv", "--out", "o", "--model", "/no/such/model"], "model path does not exist: /no/such/model"),
    (["embed", "c.tsv", "--out", "o", "--classnames", "/no/such/file", "--label-col", "y"],
     "--classnames: no file /no/such/file"),
    (["graph", "e", "--out", "o", "--k", "0"], "--k must be positive, got 0"),
    (["graph", "e", "--out", "o", "--recall-target", "1.5"], "--recall-target must be in (0, 1], got 1.5"),
    (["graph", "e", "--out", "o", "--group-size", "0"], "--group-size must be positive, got 0"),
    (["graph", "e", "--out", "o", "--graph", "g", "--index", "exact"],
     "--graph reuses a graph as it is: drop --k, --index and --search-seed"),
])
def test_a_bad_value_is_one_line_before_any_work(monkeypatch, capsys, tmp_path, args, message):
    monkeypatch.chdir(tmp_path)
    code, line = run(monkeypatch, capsys, *args)
    assert code == 2 and line == f"xclr-prep: error: {message}"
    assert not (tmp_path / "o").exists()


def test_classnames_need_a_label_column(tmp_path):
    with pytest.raises(PrepError, match="^--classnames needs --label-col$"):
        CorpusSpec(classnames=("cat", "dog"))
    assert CorpusSpec(classnames=("cat", "dog"), label_col="y").class_label_mode


def test_a_choice_outside_the_list_is_refused_from_python_too():
    with pytest.raises(PrepError, match="^--dtype must be one of float16, float32, got 'int8'$"):
        EmbedOptions(inputs=("c.tsv",), out=HERE, dtype="int8")
    with pytest.raises(PrepError, match="^--format must be one of tar, parquet, csv, tsv, jsonl, got 'xml'$"):
        EmbedOptions(inputs=("c.tsv",), out=HERE, input_format="xml")


def test_an_unknown_flag_is_clicks_usage_error():
    result = CliRunner().invoke(cli, ["graph", "e", "--out", "o", "--no-such-flag"])
    assert result.exit_code == 2 and "No such option '--no-such-flag'" in result.output
