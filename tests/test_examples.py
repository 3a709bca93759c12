"""examples/api.py, the Python API in one script, runs and does what it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "api.py"


def test_api_example_runs():
    r = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert re.search(r"2\. 3sfc: 335 bytes for a 9,640-byte update", out)
    lines = {m.group(1): (float(m.group(2)), int(m.group(3).replace(",", "")))
             for m in re.finditer(r"3\. (\w+) on blobs with tinynet: accuracy ([\d.]+), ([\d,]+) bytes", out)}
    assert set(lines) == {"half", "3sfc"}
    assert lines["half"][1] == 2 * 1923 + 11      # 1,923 parameters in float16, plus the header
    assert lines["3sfc"][1] < lines["half"][1] / 10
    assert lines["half"][0] > 0.6 and lines["3sfc"][0] > 0.6  # three well-separated blobs: chance is 0.33
    # the run folder (out=), the per-round callback and sim.metrics
    assert re.search(r"1\. e3sfc on digits: .* 3 rounds in sim\.metrics, run folder: .*metrics\.jsonl.*summary\.json",
                     out)
    assert len(re.findall(r"^   round \d: accuracy", out, re.M)) == 3
    # BatchNorm refused with one line naming the way out; converted to GroupNorm it trains
    assert re.search(r"^4\. bnnet refused: --model: BNNet has BatchNorm.*batchnorm_to_groupnorm", out, re.M)
    acc = float(re.search(r"4\. gnnet \(BatchNorm -> GroupNorm\) with 3sfc: accuracy ([\d.]+)", out).group(1))
    assert acc > 0.6


ROOT = EXAMPLE.parents[1]


def test_demo_config_is_the_recommended_setting_cut_short():
    """configs/demo.toml (FedAvg and the published E-3SFC in the demo) is configs/e3sfc-plus.toml's
    setting but for the method's own knobs and the shortening scripts/demo.sh applies to both."""
    import tomllib

    demo = tomllib.loads((ROOT / "configs" / "demo.toml").read_text())
    plus = tomllib.loads((ROOT / "configs" / "e3sfc-plus.toml").read_text())
    script = (ROOT / "scripts" / "demo.sh").read_text()
    own = {"method", "samples", "feature_bits", "steps"}
    shared = {k: v for k, v in plus.items() if k not in own | {"rounds"}}
    assert {k: demo.get(k) for k in shared} == shared
    assert set(demo) - set(plus) == {"train_subset"}
    assert f"--rounds {demo['rounds']} --train-subset {demo['train_subset']}" in script
    assert f"{demo['rounds']} rounds, {demo['train_subset']:,} training images" in script


def test_demo_script_runs_its_commands(tmp_path):
    """scripts/demo.sh end to end on a tiny override (digits, 3 clients, 2 rounds): the three runs on one
    split, the aligned table, the frontier figure."""
    import json
    import os
    import shutil

    bindir = Path(sys.executable).parent
    if not (bindir / "e3sfc").exists():
        import pytest
        pytest.skip("no e3sfc command beside this Python")
    env = {**os.environ, "E3SFC_DEMO_OUT": str(tmp_path / "demo"),
           "E3SFC_DEMO_ARGS": "--dataset digits --clients 3 --rounds 2 --train-subset 0 --batch-size 32",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), str(bindir)], capture_output=True, text=True,
                       timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("run "))
    assert set(lines[head + 1]) <= {"-", " "}
    assert [line.split()[:2] for line in lines[head + 2:head + 5]] == [["e3sfc-plus", "e3sfc"], ["fedavg", "fedavg"],
                                                                       ["e3sfc", "e3sfc"]]
    assert (tmp_path / "demo" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    cfgs = [json.loads((tmp_path / "demo" / n / "config.json").read_text())
            for n in ("e3sfc-plus", "fedavg", "e3sfc")]
    assert cfgs[0]["samples"] == 4 and cfgs[0]["feature_bits"] == 8
    split = ("dataset", "clients", "alpha", "seed", "train_subset", "rounds")
    assert all({k: c[k] for k in split} == {k: cfgs[0][k] for k in split} for c in cfgs)
    shutil.rmtree(tmp_path / "demo")


def test_the_gpu_check_script_parses_and_names_the_checks_it_runs():
    """scripts/gpu-check.sh is run by hand on a lent GPU machine: it must at least parse, and run the CUDA-only
    test and the GPU round benchmark it promises."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "tests/test_cuda_graphs.py" in text and "benchmarks/gpu_round.py" in text
    assert (script.parent.parent / "tests" / "test_cuda_graphs.py").is_file()
