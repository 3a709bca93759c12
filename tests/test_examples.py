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
