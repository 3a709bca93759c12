"""README.md and docs/findings.md quote numbers; the generated reports hold them.

docs/results.md is written by experiments/suite.py from run folders, benchmarks/RESULTS.md by the
benchmark scripts (each section with its command). README.md and docs/findings.md only quote them, so a
quoted number that is in neither report is a typo, a leftover of an older run, or a claim nobody can
check. What is checked:

- every accuracy-like number with 3 or 4 decimals (0.xxx, 0.xxxx) appears as such in a report, and so
  does every one with 2 decimals (0.xx) in docs/findings.md and README's Results section (elsewhere the
  README has settings such as lr 0.01);
- every row of a quoted run table (a table with an "acc @25%" column) matches one row of a table in
  docs/results.md: its bytes, ratio and accuracies all appear in that one row;
- byte counts written with thousands separators (3,215) in docs/findings.md and in README's Results
  section (the wire-format table elsewhere in the README is sizes of encodings, not results);
- megabytes (6.40 MB) and ratios (1.94x) appear as numbers in a report (looser: this catches a number
  that matches nothing, not one that matches another row's);
- every suite group named with --groups is one of experiments/suite.py's.

- an accuracy with 4 decimals in prose that follows a method's name (3SFC, E-3SFC, Top-k, STC, PowerSGD,
  FedAvg, FedSynth and the -plus / -res variants, the nearest one within 120 characters before it) is on
  a report line that names that method too: a number copied from another method's row fails even when
  it is somewhere in the report.

Not checked: points differences (computed from two accuracies) and numbers with one decimal.
ALLOWED holds the few quoted numbers that are not results, each with its reason. The reports may grow
(a new group, a new benchmark): the tests read whatever they hold.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTS = (ROOT / "docs" / "results.md", ROOT / "benchmarks" / "RESULTS.md")
QUOTERS = (ROOT / "README.md", ROOT / "docs" / "findings.md")

# number -> why it may appear in README.md or docs/findings.md without being in a report
ALLOWED = {
    "0.7012": "README: an example of the progress line's format, not a result",
    "12.34": "README: the same example progress line (MB so far)",
    "111.6": "findings: the paper's own figure, quoted beside ours (110.9x)",
    "44.7": "findings: ResNet-18's residual, 11,173,962 parameters x 4 bytes (benchmarks/RESULTS.md)",
}

ACC = re.compile(r"(?<![\d.])0\.\d{3,4}(?!\d)")
ACC2 = re.compile(r"(?<![\d.])0\.\d{2}(?!\d)")
THOUSANDS = re.compile(r"(?<![\d.])(?<!\d,)\d{1,3}(?:,\d{3})+(?!\d|,\d)")
MB = re.compile(r"(?<![\d.,])(\d[\d,]*(?:\.\d+)?) ?MB\b")
RATIO = re.compile(r"(?<![\d.])(\d+\.\d+)x\b")
NUMBER = re.compile(r"(?<![\d.])\d[\d,]*(?:\.\d+)?")


def reports_text() -> str:
    return "\n".join(p.read_text() for p in REPORTS)


def lines(path: Path, text: str | None = None):
    for n, line in enumerate((path.read_text() if text is None else text).splitlines(), 1):
        yield f"{path.relative_to(ROOT)}:{n}", line


def readme_results() -> str:
    """README's "## Results" section (to the next "## " heading), with the lines before it blanked so
    that line numbers stay the file's."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Results\n")
    end = text.index("\n## ", start + 1)
    return "\n" * text[:start].count("\n") + text[start:end]


def unsourced(pattern: re.Pattern, sources: set[str], texts) -> list[str]:
    bad = []
    for where, line in texts:
        for m in pattern.finditer(line):
            n = m.group(1) if pattern.groups else m.group(0)
            if n not in sources and n not in ALLOWED:
                bad.append(f"{where}: {n}")
    return bad


def quoted_lines():
    for p in QUOTERS:
        yield from lines(p)


def test_reports_and_quoters_exist():
    for p in (*REPORTS, *QUOTERS):
        assert p.is_file(), p
    assert len(ACC.findall((ROOT / "docs" / "results.md").read_text())) > 100


def test_accuracies_quoted_are_in_a_report():
    text = reports_text()
    bad = unsourced(ACC, set(ACC.findall(text)), quoted_lines())
    results_texts = [*lines(ROOT / "docs" / "findings.md"), *lines(ROOT / "README.md", readme_results())]
    bad += unsourced(ACC2, set(ACC2.findall(text)), results_texts)
    assert not bad, "accuracy-like numbers in neither docs/results.md nor benchmarks/RESULTS.md:\n" + "\n".join(bad)


def table_rows(text: str):
    """Markdown tables of ``text``: (header cells, [row cells, ...]) each."""
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")])
        elif block:
            if len(block) > 2:
                yield block[0], block[2:]
            block = []


def numeric(cells: list[str]) -> set[str]:
    return {c for c in cells if re.fullmatch(r"\d[\d,]*(?:\.\d+)?", c)}


def test_quoted_run_tables_match_a_row_of_results():
    source_rows = [set(r) for _, rows in table_rows((ROOT / "docs" / "results.md").read_text()) for r in rows]
    checked, bad = 0, []
    for p in QUOTERS:
        for header, rows in table_rows(p.read_text()):
            if not any(h.startswith("acc @25%") for h in header):
                continue
            for row in rows:
                nums = numeric(row)
                checked += 1
                if not any(nums <= s for s in source_rows):
                    bad.append(f"{p.relative_to(ROOT)}: {' | '.join(row)}")
    assert checked >= 10  # README's reference table
    assert not bad, "rows whose numbers are not one row of docs/results.md:\n" + "\n".join(bad)


def test_byte_counts_quoted_are_in_a_report():
    sources = set(THOUSANDS.findall(reports_text()))
    texts = [*lines(ROOT / "docs" / "findings.md"), *lines(ROOT / "README.md", readme_results())]
    bad = unsourced(THOUSANDS, sources, texts)
    assert not bad, "byte counts in neither report:\n" + "\n".join(bad)


@pytest.mark.parametrize("pattern", [MB, RATIO], ids=["MB", "ratio"])
def test_megabytes_and_ratios_quoted_are_numbers_of_a_report(pattern):
    sources = set(NUMBER.findall(reports_text()))
    bad = unsourced(pattern, sources, quoted_lines())
    assert not bad, "numbers in neither report:\n" + "\n".join(bad)


def suite_groups() -> set[str]:
    text = (ROOT / "experiments" / "suite.py").read_text()
    block = text[text.index("TITLES = {"):]
    block = block[:block.index("\n}\n")]
    return set(re.findall(r'^    "([\w-]+)":', block, re.M))


def test_groups_named_are_the_suites():
    groups = suite_groups()
    assert {"reference", "beyond", "convnet-beyond", "budget"} <= groups
    named = set()
    for _, line in quoted_lines():
        for m in re.finditer(r"--groups[ =]([\w,-]+)", line):
            named |= set(m.group(1).split(","))
    assert named and not named - groups, sorted(named - groups)


def test_allowed_numbers_are_still_quoted():
    """The allow-list stays small: an entry no longer quoted goes."""
    text = "\n".join(p.read_text() for p in QUOTERS)
    assert all(re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", text) for n in ALLOWED)


# a method as prose names it -> the name a report line gives it (longest first: e3sfc-plus before 3sfc)
METHOD_NAMES = (("e3sfc-plus", "e3sfc-plus"), ("3sfc-plus", "3sfc-plus"), ("e3sfc-res", "e3sfc-res"),
                ("3sfc-res", "3sfc-res"), ("e-3sfc", "e3sfc"), ("e3sfc", "e3sfc"), ("3sfc", "3sfc"),
                ("top-k", "topk"), ("topk", "topk"), ("stc", "stc"), ("powersgd", "powersgd"),
                ("fedavg", "fedavg"), ("fedsynth", "fedsynth"))
METHOD = re.compile("|".join(re.escape(a) for a, _ in METHOD_NAMES), re.I)
ACC4 = re.compile(r"(?<![\d.])0\.\d{4}(?!\d)")


def named_accuracies(texts):
    """(where, the method's report name, the number) for each 4-decimal accuracy in prose (not a table row)
    with a method named within 120 characters before it, the nearest."""
    canon = dict(METHOD_NAMES)
    for where, line in texts:
        if line.lstrip().startswith("|"):
            continue
        for m in ACC4.finditer(line):
            names = list(METHOD.finditer(line[max(0, m.start() - 120):m.start()]))
            if names:
                yield where, canon[names[-1].group(0).lower()], m.group(0)


def test_an_accuracy_quoted_after_a_method_is_on_a_report_line_naming_it():
    report = [line.lower() for p in REPORTS for line in p.read_text().splitlines()]
    found = list(named_accuracies(quoted_lines()))
    assert len(found) > 50
    bad = [f"{where}: {name} {n}" for where, name, n in found
           if not any(n in line and re.search(r"(?<![\w-])" + re.escape(name), line) for line in report)]
    assert not bad, "accuracies quoted after a method's name on no report line naming it:\n" + "\n".join(bad)


def test_named_accuracies_take_the_nearest_method_before_the_number():
    got = list(named_accuracies([("x:1", "Top-k reaches 0.8000 and STC's 0.7000; E-3SFC 0.6000"),
                                 ("x:2", "| topk | 0.9000 |"), ("x:3", "no method 0.5000")]))
    assert got == [("x:1", "topk", "0.8000"), ("x:1", "stc", "0.7000"), ("x:1", "e3sfc", "0.6000")]
