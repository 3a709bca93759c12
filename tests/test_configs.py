"""Every shipped config file loads and validates, and the docs name only config files that exist."""

import re
import tomllib
from pathlib import Path

import pytest

from e3sfc.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


def test_there_are_configs():
    assert {"reference.toml", "e3sfc-plus.toml", "3sfc-plus.toml", "e3sfc-cnn.toml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_validates(path):
    """As `e3sfc run --config PATH` reads it: defaults, then the file, checked (a bad value raises)."""
    cfg = RunConfig.from_sources(path)
    values = tomllib.loads(path.read_text())
    values = {**{k: v for k, v in values.items() if k != "run"}, **values.get("run", {})}
    for key, value in values.items():
        assert getattr(cfg, key.replace("-", "_")) == value, key


def test_3sfc_plus_is_e3sfc_plus_one_way():
    """configs/3sfc-plus.toml is configs/e3sfc-plus.toml with --method 3sfc: the beyond group's 3sfc-plus runs."""
    one = tomllib.loads((ROOT / "configs" / "3sfc-plus.toml").read_text())
    both = tomllib.loads((ROOT / "configs" / "e3sfc-plus.toml").read_text())
    assert one == {**both, "method": "3sfc"}
    assert (one["samples"], one["feature_bits"], one["steps"]) == (4, 8, 10)
    suite = (ROOT / "experiments" / "suite.py").read_text()
    assert '"--config", "configs/e3sfc-plus.toml", "--method", "3sfc"' in suite


def test_docs_name_existing_configs():
    named = set()
    for doc in [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "docs").glob("*.md"), *(ROOT / "scripts").glob("*")]:
        if doc.is_file():
            named |= set(re.findall(r"configs/([\w.-]+\.toml)", doc.read_text()))
    assert "3sfc-plus.toml" in named
    missing = sorted(n for n in named if not (ROOT / "configs" / n).is_file())
    assert not missing, missing
