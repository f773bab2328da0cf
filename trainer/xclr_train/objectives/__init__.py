"""The training objectives, one class per module of this package (`base` says what one owns). Every module here is
imported below, so a new objective is one new module: a subclass of `Objective` with its `name`, `Args` and `rows`
(copy `simclr.py`), and its test."""

import importlib
import pkgutil

from xclr_train.objectives.base import OBJECTIVES, Graph, Objective, Options, Views, make_objective, parse_options

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OBJECTIVES", "Graph", "Objective", "Options", "Views", "make_objective", "parse_options"]
