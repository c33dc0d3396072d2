"""The README's "Federate your own LightningModule" section runs as written (its code blocks, top to bottom)."""

from __future__ import annotations

import re

import pytest
from helpers import ROOT

SECTION = "## Federate your own LightningModule"


def section_code() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.DOTALL)


def test_the_readme_section_runs_as_written(tmp_path, monkeypatch) -> None:
    blocks = section_code()
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile(blocks[0], "README.md[federate-1]", "exec"), namespace)
    first = namespace["result"]
    assert {"val_loss", "val_mse", "global_val_loss", "val_loss_std"} <= set(first.history[-1])
    assert first.history[-1]["val_loss"] < first.history[0]["val_loss"]  # it learned
    assert not any(k.startswith("net.2.") for k in first.global_state)  # the personal layer stayed home
    assert (tmp_path / "runs" / "my_module" / "metrics.png").is_file()
    exec(compile(blocks[1], "README.md[federate-2]", "exec"), namespace)
    second = namespace["result"]
    assert second.history[-1]["val_mse"] == pytest.approx(second.history[-1]["val_loss"], rel=1e-5)
