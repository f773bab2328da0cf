"""The README's loss example runs as written and trains the encoder against the targets it describes."""

import re
from pathlib import Path

import torch

README = Path(__file__).parent.parent / "README.md"
MARK = "<!-- README loss example: run by tests/test_readme.py -->"


def test_readme_loss_example_runs_and_reaches_the_encoder():
    text = README.read_text()
    assert MARK in text, "the README lost its loss example"
    code = re.search(r"```python\n(.*?)```", text[text.index(MARK):], re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    S, loss, encoder = scope["S"], scope["loss"], scope["encoder"]
    assert torch.isfinite(loss) and loss.ndim == 0
    assert encoder[1].weight.grad is not None and encoder[1].weight.grad.abs().sum() > 0
    # the targets the comments describe: 1 within a caption, the stored similarity on a graph edge, else the floor
    assert S[0, 1] == 1 and S[0, 2] == torch.tensor(0.6) and S[2, 4] == torch.tensor(0.5) and S[0, 7] == 0.2
