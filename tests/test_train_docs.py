"""docs/train.md against the code: its option table lists exactly the options of `xclr-train` (the TrainConfig fields
and the objectives' Args), and its --loss row and Losses tables name exactly the registered objectives, so a new
objective or option fails here until it is documented."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from xclr_schemas.options import flag, is_option
from xclr_train.config import TrainConfig
from xclr_train.objectives import OBJECTIVES

TRAIN_MD = Path(__file__).parent.parent / "docs" / "train.md"


def section(title: str) -> str:
    """The text of docs/train.md from the heading `## title` to the next heading of that level."""
    text = TRAIN_MD.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def first_cells(text: str) -> list[str]:
    """The first cell of every table row of `text` (|---| lines left out)."""
    return [line.split(" | ")[0][2:] for line in text.splitlines() if line.startswith("| ")]


def test_the_option_table_lists_every_option_of_the_command():
    table = TRAIN_MD.read_text().split("\n## ", 1)[0]
    documented = {name for cell in first_cells(table) for name in re.findall(r"`(--[a-z-]+)", cell)}
    general = {flag(f.name) for f in fields(TrainConfig) if is_option(f)}
    objectives = {flag(f.name) for cls in OBJECTIVES.values() for f in fields(cls.Args)}
    assert documented == general | objectives, (sorted(documented - general - objectives),
                                                sorted((general | objectives) - documented))


def test_the_loss_row_and_the_losses_tables_name_every_registered_objective():
    table = TRAIN_MD.read_text().split("\n## ", 1)[0]
    loss_row = next(cell for cell in first_cells(table) if cell.startswith("`--loss "))
    assert sorted(loss_row.strip("`").removeprefix("--loss ").split("\\|")) == sorted(OBJECTIVES)
    in_tables = [re.match(r"`([a-z-]+)", cell).group(1) for cell in first_cells(section("Losses")) if cell[0] == "`"]
    assert set(in_tables) == set(OBJECTIVES), (set(OBJECTIVES) - set(in_tables), set(in_tables) - set(OBJECTIVES))
