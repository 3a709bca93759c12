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


def test_cnn_config_is_the_anymodel_groups_e3sfc_cnn_setting():
    """configs/e3sfc-cnn.toml is the setting its results were measured in: the suite's anymodel runs
    e3sfc-cnn-{1k,3k}-twoway are this file with --payload-bytes and --seed (compared as RunConfigs)."""
    import importlib.util

    from e3sfc.cli import build_parser
    spec = importlib.util.spec_from_file_location("suite", ROOT / "experiments" / "suite.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    runs = suite.anymodel_runs()
    parser = build_parser()

    def config(args):
        ns = parser.parse_args(["run", *args])
        return RunConfig.from_sources(ns.config, **{k: getattr(ns, k) for k in RunConfig.__dataclass_fields__})

    for b, budget in (("1k", "833"), ("3k", "3215")):
        for s in (42, 43):
            mine = config(["--config", str(ROOT / "configs" / "e3sfc-cnn.toml"), "--payload-bytes", budget,
                           "--seed", str(s)])
            args = [str(ROOT / a) if a.endswith(".toml") else a for a in runs[f"e3sfc-cnn-{b}-twoway-seed{s}"]]
            assert mine == config(args), (b, s)


def test_docs_name_existing_configs():
    named = set()
    for doc in [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "docs").glob("*.md"), *(ROOT / "scripts").glob("*")]:
        if doc.is_file():
            named |= set(re.findall(r"configs/([\w.-]+\.toml)", doc.read_text()))
    assert "3sfc-plus.toml" in named
    missing = sorted(n for n in named if not (ROOT / "configs" / n).is_file())
    assert not missing, missing
