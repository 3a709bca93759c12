from __future__ import annotations

from pathlib import Path

import pytest

from e3sfc.cli import main

FAST = ["--dataset", "digits", "--clients", "3", "--rounds", "4", "--batch-size", "32", "--lr", "0.05"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["run", *FAST, "--out", str(root / "fedavg")]) == 0
    assert main(["run", *FAST, "--method", "topk", "--ratio", "0.05", "--out", str(root / "topk")]) == 0
    return root


def test_compare_table_and_markdown(two_runs, tmp_path, capsys):
    md = tmp_path / "t.md"
    assert main(["compare", str(two_runs / "fedavg"), str(two_runs / "topk"), "--target", "0.5",
                 "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()  # an aligned text table: header, rule, one line a run, columns lined up
    assert lines[0].startswith("run ") and set(lines[1]) <= {"-", " "} and len(lines) == 4
    assert lines[2].split()[:2] == ["fedavg", "fedavg"] and lines[3].split()[:2] == ["topk", "topk"]
    assert len({len(line) for line in lines[:2]}) == 1 and "|" not in out
    # short by default: bytes each way, x less than dense, final accuracy, MB to the target, s / round
    assert "mean acc, last 10%" in lines[0] and "MB to 0.5" in lines[0] and "acc @25%" not in lines[0]
    assert main(["compare", str(two_runs / "fedavg"), str(two_runs / "topk"), "--all"]) == 0
    every = capsys.readouterr().out.splitlines()[0]
    assert "acc @25%" in every and "rounds to target" in every and "MB in all" in every
    text = md.read_text()
    assert "acc @25%" in text  # markdown keeps every column
    assert "| fedavg | fedavg |" in text and "| topk | topk |" in text
    assert main(["compare", str(two_runs / "fedavg"), str(two_runs / "topk"), "--target", "0.5",
                 "--markdown", "-"]) == 0
    assert capsys.readouterr().out.strip() == text.strip()
    fedavg_row = next(line for line in text.splitlines() if line.startswith("| fedavg"))
    cells = [c.strip() for c in fedavg_row.strip("|").split("|")]
    # MLP on 8x8 digits: P = 64*200+200 + 200*200+200 + 200*10+10 = 55,210; dense payload 4P + 11
    assert cells[2] == f"{4 * 55_210 + 11:,}"
    assert float(cells[4]) == pytest.approx(1.0)  # fedavg sends exactly the dense model
    # down: over rounds 2..4 only (round 1 sends nothing down: w_1 is built from the seed)
    assert cells[3] == f"{4 * 55_210 + 11:,}"


def test_compare_groups_seeds_mean_and_spread(tmp_path, capsys):
    """Runs that differ only in their seed make one row: mean ± sample sd; a target some never reach
    says of how many the mean is."""
    import json

    from e3sfc.report import seed_groups, load_run

    for seed, accs in ((1, (0.5, 0.7)), (2, (0.6, 0.9))):
        run = tmp_path / f"topk-seed{seed}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"method": "topk", "rounds": 2, "eval_every": 1, "seed": seed}))
        rows = [{"round": t, "accuracy": a, "uplink_bytes": 100, "downlink_bytes": 0 if t == 1 else 300,
                 "cum_uplink_bytes": 100 * t, "cum_downlink_bytes": 300 * (t - 1), "participants": 1,
                 "seconds": float(t)} for t, a in enumerate(accs, 1)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = [load_run(tmp_path / "topk-seed1"), load_run(tmp_path / "topk-seed2")]
    (row,) = seed_groups(runs, target=0.85)
    assert row["run"] == "topk (2 seeds)" and row["n"] == 2
    assert row["acc_100"] == pytest.approx(0.8) and row["spread"]["acc_100"] == pytest.approx(0.1414, abs=1e-4)
    assert row["down_bytes_per_client_round"] == pytest.approx(300)  # round 1 sent nothing down
    assert row["up_bytes_per_client_round"] == pytest.approx(100)
    assert row["rounds_to_target"] == 2 and row["counts"]["rounds_to_target"] == 1
    assert main(["compare", *(str(r.path) for r in runs), "--target", "0.85", "--all"]) == 0
    line = capsys.readouterr().out.splitlines()[2]
    assert line.startswith("topk (2 seeds)") and "0.8000 ± 0.1414" in line and "2 (1 of 2)" in line


def test_plot_writes_png(two_runs, tmp_path):
    out = tmp_path / "fig.png"
    assert main(["plot", str(two_runs / "fedavg"), str(two_runs / "topk"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(two_runs / "topk"), "--metric", "loss", "--out", str(tmp_path / "l.png")]) == 0


def test_plot_and_compare_reject_bad_folders(tmp_path, capsys, two_runs):
    assert main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["plot", str(two_runs / "topk"), "--metric", "speed", "--out", str(tmp_path / "y.png")]) == 2
    assert "--metric: 'speed'" in capsys.readouterr().err
    assert main(["compare", str(two_runs / "topk"), "--target", "7"]) == 2


def test_plot_partition(tmp_path):
    out = tmp_path / "p.png"
    assert main(["plot-partition", "--dataset", "digits", "--clients", "5", "--alpha", "0.3", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_tail_mean_accuracy_hand_case(tmp_path):
    """acc_last10 is the mean accuracy of the evaluated rounds in the last 10% of the rounds."""
    import json

    from e3sfc.report import compare_rows, load_run

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "fedavg", "rounds": 20, "eval_every": 1}))
    rows = [{"round": t, "accuracy": t / 100, "cum_uplink_bytes": 10 * t, "cum_downlink_bytes": 10 * t,
             "participants": 1, "seconds": float(t)} for t in range(1, 21)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (row,) = compare_rows([load_run(run)])
    assert row["acc_last10"] == pytest.approx((0.19 + 0.20) / 2)  # rounds 19 and 20 of 20
    assert row["acc_100"] == pytest.approx(0.20) and row["acc_25"] == pytest.approx(0.05)


def test_suite_states_megabytes_to_target_against_the_group():
    """experiments/suite.py's verdict on megabytes (up + down) to 0.70, on a hand-made group."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("suite", Path(__file__).parents[1] / "experiments" / "suite.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    fed, topk, never = ({"run": "fedavg", "mb_to_target": 4.58}, {"run": "topk-match", "mb_to_target": 7.07},
                        {"run": "stc-match", "mb_to_target": None})
    assert suite.mb_verdict({"run": "e3sfc", "mb_to_target": 3.31}, [fed, topk, never]) == (
        "to reach 0.70 it sent 3.31 MB up and down in all (fedavg 4.58, topk-match 7.07, stc-match never): "
        "the fewest of these.")
    assert suite.mb_verdict({"run": "e3sfc", "mb_to_target": 4.92}, [fed, topk]).endswith("more than fedavg.")
    assert suite.mb_verdict({"run": "e3sfc", "mb_to_target": None}, [fed]) == "it never reached 0.70 accuracy."


def _suite():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("suite", Path(__file__).parents[1] / "experiments" / "suite.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    return suite


def test_suite_twoway_and_beyond_verdicts_on_hand_made_rows(tmp_path):
    suite = _suite()

    def row(run, acc, mb=6.4):
        return {"run": run, "acc_last10": acc, "total_mb": mb, "mb_to_target": 2.0, "ratio_vs_dense": 110.9}

    rows = [row("e3sfc-alpha0.1", 0.72), row("topk-twoway-alpha0.1", 0.64, 6.37), row("stc-twoway-alpha0.1", 0.75)]
    v = suite.twoway_verdicts(rows)
    assert v[0].startswith("- alpha 0.1: e3sfc beats topk compressed both ways by 8.0 points")
    assert "(0.5% apart)" in v[0]
    assert v[1].startswith("- alpha 0.1: e3sfc loses to stc compressed both ways by 3.0 points")
    beyond = [row("e3sfc-plus-alpha1.0-seed42", 0.84), row("e3sfc-plus-alpha1.0-seed43", 0.82),
              row("stc-twoway-alpha1.0-seed42", 0.80), row("stc-twoway-alpha1.0-seed43", 0.81)]
    v = suite.beyond_verdicts(tmp_path, beyond)
    assert v == ["- alpha 1.0, total bytes, both ways: e3sfc-plus beats stc-twoway by 2.5 points (mean of the last "
                 "10 rounds over seeds 42, 43: 0.8300 against 0.8050; seed spread 0.8200-0.8400 against "
                 "0.8000-0.8100; MB in all at seed 42: 6.40 against 6.40)."]


def test_suite_convnet_beyond_verdicts_on_hand_made_rows():
    suite = _suite()
    rows = [{"run": run, "acc_last10": acc, "total_mb": 13.0} for run, acc in
            (("3sfc-plus-seed42", 0.86), ("3sfc-plus-seed43", 0.88), ("topk-match-seed42", 0.90),
             ("topk-match-seed43", 0.89), ("stc-match-seed42", 0.81))]
    v = suite.convnet_beyond_verdicts(rows)
    assert v == ["- ConvNet, uplink bytes, one way: 3sfc-plus loses to topk-match by 2.5 points (mean of the last 10 "
                 "rounds over seeds 42, 43: 0.8700 against 0.8950; seed spread 0.8600-0.8800 against 0.8900-0.9000; "
                 "MB in all at seed 42: 13.00 against 13.00).",
                 "- ConvNet, uplink bytes, one way: 3sfc-plus beats stc-match by 5.0 points (mean of the last 10 "
                 "rounds over seed 42: 0.8600 against 0.8100; MB in all at seed 42: 13.00 against 13.00)."]


def test_suite_settings_table_and_verdicts_on_hand_made_anymodel_rows():
    """The anymodel group's table (winner first, seeds' spread, seconds against FedAvg's) and its count: the
    synthesis chosen on seed 42 against every rival of its setting."""
    suite = _suite()

    def row(run, acc, sec=2.0):
        return {"run": run, "acc_last10": acc, "total_mb": 0.6, "seconds_per_round": sec}

    rows = [row("fedavg-seed42", 0.80, 1.0), row("fedavg-seed43", 0.82, 1.0),
            row("e3sfc-cnn-3k-twoway-seed42", 0.70), row("e3sfc-cnn-3k-twoway-seed43", 0.72),
            row("powersgd-3k-twoway-seed42", 0.69, 1.0), row("powersgd-3k-twoway-seed43", 0.69, 1.0),
            row("stc-golomb-3k-twoway-seed42", 0.60), row("e3sfc-cnn-1k-twoway-seed42", 0.50),
            row("topk-golomb-1k-twoway-seed42", 0.55)]
    settings = suite.anymodel_settings()
    table = suite.settings_table(rows, settings).splitlines()
    assert table[2] == "| quickcnn both ways, 3.2 KB | **e3sfc-cnn** | 42, 43 | 0.7100 (0.7000-0.7200) | 0.60 | 2.00x |"
    assert table[3] == "| quickcnn both ways, 3.2 KB | powersgd | 42, 43 | 0.6900 (0.6900-0.6900) | 0.60 | 1.00x |"
    assert table[5].startswith("| quickcnn both ways, about 1 KB | **topk-golomb** | 42 | 0.5500 |")
    v = suite.settings_verdicts(rows, settings, "the goal")
    assert v[0].startswith("- quickcnn both ways, 3.2 KB: e3sfc-cnn beats powersgd by 2.0 points")
    assert v[-1] == ("- The synthesis chosen on seed 42 (e3sfc-cnn at quickcnn both ways, 3.2 KB; e3sfc-cnn at "
                     "quickcnn both ways, about 1 KB) beats every rival run in its setting in 1 of the 2 settings run "
                     "so far (mean of the last 10 rounds over the seeds both have; goal: the goal).")


def test_suite_keeps_the_sections_of_groups_not_on_this_machine(tmp_path):
    suite = _suite()
    old = tmp_path / "results.md"
    old.write_text("# Results\n\nheader\n\n## Group A\n\n| a |\n\nverdict A\n\n## Group B\n\ntext B\n")
    kept = suite.previous_sections(old)
    assert kept == {"Group A": "## Group A\n\n| a |\n\nverdict A\n", "Group B": "## Group B\n\ntext B\n"}
    assert suite.previous_sections(tmp_path / "missing.md") == {}


def test_partition_plot_keeps_a_readable_width_at_1000_clients(tmp_path):
    import struct

    import numpy as np

    from e3sfc.report import plot_partition

    counts = np.random.default_rng(0).integers(0, 30, size=(1000, 10))
    out = plot_partition(counts, tmp_path / "p.png", "1000 clients")
    width, height = struct.unpack(">II", out.read_bytes()[16:24])  # the PNG's IHDR
    assert width <= 2000 and height <= 1000


def test_suite_budget_verdicts_on_hand_made_rows():
    suite = _suite()
    rows = [{"run": f"{sch}-12860k-alpha1.0-seed{s}", "acc_last10": acc, "total_mb": 12.8}
            for sch, s, acc in (("constant", 42, 0.82), ("constant", 43, 0.80), ("adaptive", 42, 0.77),
                                ("adaptive", 43, 0.79), ("decay", 42, 0.83), ("constant", 42, 0.75),
                                ("decay", 42, 0.75))]
    rows[-2]["run"] = rows[-1]["run"] = None
    rows[-2:] = [{"run": "constant-6430k-alpha0.1-seed42", "acc_last10": 0.75, "total_mb": 6.4},
                 {"run": "decay-6430k-alpha0.1-seed42", "acc_last10": 0.75004, "total_mb": 6.4}]
    v = suite.budget_verdicts(rows)
    assert v[0].startswith("- 12860k-alpha1.0: decay beats constant by 1.0 points (mean of the last 10 rounds "
                           "over seed 42: 0.8300 against 0.8200")
    assert v[1].startswith("- 12860k-alpha1.0: adaptive loses to constant by 3.0 points (mean of the last 10 "
                           "rounds over seeds 42, 43: 0.7800 against 0.8100; seed spread 0.7700-0.7900")
    assert v[2].startswith("- 6430k-alpha0.1: decay ties with constant by 0.0 points")
    assert len(suite.groups(suite.Path("runs"))["budget"]) == 24


def test_suite_compares_round_times_only_between_runs_on_the_same_kind_of_device():
    suite = _suite()
    fed = {"run": "fedavg", "method": "fedavg", "up_bytes_per_client_round": 1000.0,
           "down_bytes_per_client_round": 1000.0, "acc_last10": 0.9, "seconds_per_round": 2.0, "device": "cpu",
           "mb_to_target": None, "rounds_to_target": None}
    mine = {**fed, "run": "3sfc", "method": "3sfc", "up_bytes_per_client_round": 10.0, "acc_last10": 0.8,
            "seconds_per_round": 3.0}
    assert "a round takes 1.5x as long here" in suite.verdicts([fed, mine])[0]
    line = suite.verdicts([{**fed, "device": "cuda"}, mine])[0]
    assert "a round takes" not in line and "does not compare with FedAvg's here (cpu against cuda" in line


@pytest.mark.parametrize("argv,needle", [
    (["plot", "RUN", "--out", "OUT/p.xyz"], "--out: format 'xyz' of"),
    (["plot", "RUN", "--out", "/proc/p.png"], "--out: cannot write '/proc/p.png'"),
    (["plot", "RUN", "--out", "OUT"], "is a folder; expected a file path"),
    (["plot", "RUN", "--out", "RUN/config.json/p.png"], "is not a writable folder"),
    (["compare", "RUN", "--markdown", "/proc/t.md"], "--markdown: cannot write '/proc/t.md'"),
    (["compare", "RUN", "--markdown", "OUT"], "--markdown: "),
    (["plot-partition", "--dataset", "digits", "--out", "/proc/p.png"], "--out: cannot write '/proc/p.png'"),
    (["plot-partition", "--dataset", "digits", "--out", "OUT/p.xyz"], "--out: format 'xyz'"),
    (["fetch", "emnist", "--emnist-split", "bad"], "--emnist-split: 'bad' is not allowed"),
    (["fetch", "nope"], "--dataset: 'nope' is not allowed"),
])
def test_outputs_are_checked_first(argv, needle, two_runs, tmp_path, capsys):
    from conftest import one_line_error
    argv = [a.replace("RUN", str(two_runs / "fedavg")).replace("OUT", str(tmp_path)) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    assert needle in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, not even half


@pytest.mark.parametrize("name,text,needle", [
    ("metrics.jsonl", b"\xff\xfe\n", "metrics.jsonl is not UTF-8 text"),
    ("metrics.jsonl", b"junk\n", "metrics.jsonl line 5 is not JSON"),
    ("metrics.jsonl", b'{"round": 5, "accuracy": NaN, "cum_uplink_bytes": 1, "cum_downlink_bytes": 1, "seconds": 1}\n',
     "metrics.jsonl line 5 is not a row of a run (accuracy nan is not a number in [0, 1])"),
    ("metrics.jsonl", b'{"round": 0, "accuracy": 0.5}\n', "round 0 is not an integer >= 1"),
    ("config.json", b"\x89PNG", "config.json is not UTF-8 text"),
    ("config.json", b'{"method": "fedavg"}', "config.json: rounds None is not an integer >= 1"),
    ("config.json", b'{"method": "fedavg", "rounds": 0}', "config.json: rounds 0 is not an integer >= 1"),
    ("config.json", b"[]", "config.json holds a JSON list, not an object"),
    ("summary.json", b"{", "summary.json is not JSON"),
    ("summary.json", b'{"dense_bytes_per_transfer": 0}', "dense_bytes_per_transfer 0 is not a positive integer"),
])
def test_corrupt_run_folders_are_refused_not_drawn(name, text, needle, two_runs, tmp_path, capsys):
    import shutil

    from conftest import one_line_error
    run = tmp_path / "run"
    shutil.copytree(two_runs / "fedavg", run)
    if name == "metrics.jsonl":
        with open(run / name, "ab") as f:
            f.write(text)
    else:
        (run / name).write_bytes(text)
    md, fig = tmp_path / "t.md", tmp_path / "f.png"
    assert main(["compare", str(run), "--markdown", str(md)]) == 2
    line = one_line_error(capsys)
    assert f"run folder '{run}' is damaged" in line and needle in line, line
    assert main(["plot", str(run), "--out", str(fig)]) == 2
    assert needle in one_line_error(capsys)
    assert main(["plot", "--frontier", str(two_runs / "topk"), str(run), "--out", str(fig)]) == 2
    assert needle in one_line_error(capsys)
    assert not md.exists() and not fig.exists()


def _hand_run(root, name, method, accs, seed=42, per_round=100, **config):
    """A run folder written by hand: ``accs`` one accuracy a round, ``per_round`` bytes up and down a round."""
    import json

    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": method, "rounds": len(accs), "eval_every": 1,
                                                 "seed": seed, **config}))
    rows = [{"round": t, "accuracy": a, "cum_uplink_bytes": per_round * t, "cum_downlink_bytes": per_round * t,
             "participants": 1, "seconds": float(t), **({"cosine": 0.5} if method != "fedavg" else {})}
            for t, a in enumerate(accs, 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _drawn(monkeypatch):
    """Keep the figure plot_runs / plot_frontier would save, to look at what was drawn."""
    from e3sfc import report

    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, out, plt: figs.append(fig) or out)
    return figs


def test_a_method_keeps_its_colour_in_every_figure_and_variants_get_a_shade_and_a_marker(tmp_path, monkeypatch):
    from matplotlib.colors import to_hex, to_rgb

    from e3sfc.report import METHOD_COLORS, load_run, method_color, plot_runs, series_looks, _series

    for m in ("fedavg", "3sfc", "e3sfc", "topk", "stc", "sign", "qsgd", "fedsynth", "powersgd"):
        assert method_color(m) == METHOD_COLORS[m]
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)
    assert method_color("newmethod") == method_color("newmethod") not in METHOD_COLORS.values()
    e3 = load_run(_hand_run(tmp_path, "e3sfc", "e3sfc", [0.5, 0.6]))
    plus = load_run(_hand_run(tmp_path, "e3sfc-plus", "e3sfc", [0.6, 0.8], samples=4, feature_bits=8))
    tk = load_run(_hand_run(tmp_path, "topk", "topk", [0.4, 0.5]))
    three = load_run(_hand_run(tmp_path, "3sfc", "3sfc", [0.4, 0.5]))
    fa = load_run(_hand_run(tmp_path, "fedavg", "fedavg", [0.7, 0.8]))
    # 3sfc first in one figure, last in another: the same colour (it was orange in one, blue in the next)
    a = series_looks(_series([three, e3, tk]))
    b = series_looks(_series([tk, fa, e3, three]))
    assert a["3sfc"]["color"] == b["3sfc"]["color"] == to_rgb(METHOD_COLORS["3sfc"])
    assert a["e3sfc"]["color"] == b["e3sfc"]["color"] == to_rgb(METHOD_COLORS["e3sfc"])
    # a variant: a shade of the method's colour (not another method's), a marker and a style of its own
    v = series_looks(_series([plus, e3]))  # the series named "e3sfc" takes the plain colour, wherever it sits
    assert v["e3sfc"]["color"] == to_rgb(METHOD_COLORS["e3sfc"]) != v["e3sfc-plus"]["color"]
    assert to_hex(v["e3sfc-plus"]["color"]) not in METHOD_COLORS.values()
    assert v["e3sfc"]["marker"] != v["e3sfc-plus"]["marker"]
    blue = to_rgb(METHOD_COLORS["e3sfc"])  # a shade keeps the hue: the channels in the same order
    assert sorted(range(3), key=lambda i: blue[i]) == sorted(range(3), key=lambda i: v["e3sfc-plus"]["color"][i])
    # and the figures draw what series_looks says, for every metric
    figs = _drawn(monkeypatch)
    plot_runs([e3, plus, three], tmp_path / "a.png")
    plot_runs([three, tk], tmp_path / "b.png", "cosine")
    colors = [{ln.get_label(): ln.get_color() for ln in f.axes[0].lines} for f in figs]
    assert colors[0]["3sfc"] == colors[1]["3sfc"] == to_rgb(METHOD_COLORS["3sfc"])
    assert colors[0]["e3sfc-plus"] == v["e3sfc-plus"]["color"]


def test_a_methods_first_six_variants_differ_in_shade_and_style_and_one_style_is_dotted():
    from matplotlib.colors import to_rgb

    from e3sfc.report import METHOD_COLORS, _STYLES, shade

    for color in METHOD_COLORS.values():
        shades = [shade(color, n) for n in range(7 if color != "#000000" else 4)]
        # every two apart by more than rounding: at least 0.05 in some channel (options.png had two near-black)
        assert all(max(abs(x - y) for x, y in zip(a, b)) > 0.05 for i, a in enumerate(shades) for b in shades[i + 1:])
        assert all(max(1 - c for c in rgb) > 0.15 for rgb in shades)  # none lost on the white background
    assert len(set(map(str, _STYLES))) == len(_STYLES)
    assert sum(st == ":" or (isinstance(st, tuple) and st[1][0] == 1) for st in _STYLES) == 1  # dotted: one
    assert shade("#1f77b4", 0) == to_rgb("#1f77b4")


def test_a_curve_drawn_twice_says_so_in_the_legend(tmp_path, monkeypatch):
    """Two series with the same numbers each round: the second lies under the first (in the panel by round at
    least), so its legend entry names it."""
    from e3sfc.report import load_run, plot_runs

    a = load_run(_hand_run(tmp_path, "e3sfc-budget-constant", "e3sfc", [0.5, 0.6]))
    b = load_run(_hand_run(tmp_path, "e3sfc-budget-adaptive", "e3sfc", [0.5, 0.6], budget_schedule="adaptive"))
    c = load_run(_hand_run(tmp_path, "e3sfc", "e3sfc", [0.5, 0.7], samples=2))
    figs = _drawn(monkeypatch)
    plot_runs([a, b, c], tmp_path / "a.png")
    labels = {ln.get_label() for ln in figs[0].axes[0].lines}
    assert "e3sfc-budget-adaptive (the same accuracy each round as e3sfc-budget-constant)" in labels, labels
    assert "e3sfc-budget-constant" in labels and "e3sfc" in labels


def test_plot_runs_splits_into_rows_and_a_variant_keeps_its_look_in_every_row(tmp_path, monkeypatch):
    from e3sfc.report import load_run, plot_runs

    runs = [load_run(_hand_run(tmp_path, f"{name}-alpha{a}", m, accs, alpha=a, **extra))
            for a in (0.1, 1.0) for name, m, accs, extra in (("e3sfc-plus", "e3sfc", [0.5, 0.6], {}),
                                                              ("fast", "e3sfc", [0.5, 0.65], {"patience": 10}),
                                                              ("topk", "topk", [0.4, 0.6], {}))]
    figs = _drawn(monkeypatch)
    plot_runs(runs, tmp_path / "p.png", panel=lambda r: f"alpha {r.config['alpha']}")
    (fig,) = figs
    assert len(fig.axes) == 6 and len(fig.legends) == 2  # two rows of three, a legend a row
    rows = [{ln.get_label(): ln.get_color() for ln in fig.axes[i].lines} for i in (0, 3)]
    assert set(rows[0]) == set(rows[1]) == {"e3sfc-plus", "fast", "topk"}  # the row's title carries the alpha
    assert rows[0] == rows[1] and rows[0]["e3sfc-plus"] != rows[0]["fast"]
    assert [ax.get_title(loc="left").split(":")[0] for ax in (fig.axes[0], fig.axes[3])] == ["alpha 0.1", "alpha 1.0"]
    # a tuple of rows puts a run in each (a baseline beside every row)
    figs.clear()
    plot_runs(runs[:2], tmp_path / "q.png", panel=lambda r: ("a", "b") if r.path.name.startswith("e3sfc") else "b")
    assert [len(figs[0].axes[i].lines) for i in (0, 3)] == [1, 2]


def test_suite_splits_a_figure_of_more_than_8_series():
    import importlib.util

    from e3sfc.report import Run

    spec = importlib.util.spec_from_file_location("suite", Path(__file__).parents[1] / "experiments" / "suite.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)

    def run(name, **config):
        return Run(Path(name), {"seed": 42, "alpha": 1.0, "method": name.split("-")[0], **config}, [], None)

    few = [run(f"topk-{i}", ratio=i) for i in range(8)]
    assert suite.figure_panel("noniid", few) is None
    many = [run(f"topk-{i}", ratio=i, alpha=a) for i in range(5) for a in (0.1, 1.0)]
    assert suite.figure_panel("noniid", many)(many[1]) == "alpha 1.0"
    ref = [run("fedavg"), run("3sfc"), run("fedsynth")] + [run(f"topk-{i}", ratio=i) for i in range(7)]
    rows = suite.figure_panel("reference", ref)
    assert rows(ref[0]) == rows(ref[1]) == ("synthesis and budgets", "the other compressors")
    assert rows(ref[2]) == "synthesis and budgets" and rows(ref[3]) == "the other compressors"


def test_a_series_without_the_metric_keeps_its_legend_entry(tmp_path, monkeypatch):
    from e3sfc.report import load_run, plot_runs

    runs = [load_run(_hand_run(tmp_path, m, m, [0.5, 0.6])) for m in ("fedavg", "topk")]
    figs = _drawn(monkeypatch)
    plot_runs(runs, tmp_path / "c.png", "cosine")
    plot_runs(runs, tmp_path / "d.png", "aggregate_downlink_cosine")
    cos = [t.get_text() for t in figs[0].legends[0].get_texts()]
    assert cos[1] == "topk" and cos[0].startswith("fedavg: not drawn (cosine is 1 by definition")
    agg = [t.get_text() for t in figs[1].legends[0].get_texts()]
    assert agg[1] == "topk: no aggregate_downlink_cosine recorded"


@pytest.fixture(scope="module")
def seeded_runs(two_runs):
    """two_runs and topk again with another seed: topk's two seeds make one frontier point."""
    assert main(["run", *FAST, "--method", "topk", "--ratio", "0.05", "--seed", "7",
                 "--out", str(two_runs / "topk-seed7")]) == 0
    return [two_runs / "fedavg", two_runs / "topk", two_runs / "topk-seed7"]


def test_plot_frontier_writes_png_with_seeds_as_mean_and_spread(seeded_runs, tmp_path, monkeypatch, capsys):
    from e3sfc.report import frontier_points, load_run

    out = tmp_path / "front.png"
    assert main(["plot", "--frontier", *map(str, seeded_runs), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = [load_run(r) for r in seeded_runs]
    fedavg, topk = frontier_points(runs)
    assert fedavg["label"] == "fedavg" and fedavg["n"] == 1 and fedavg["acc_sd"] == 0
    assert topk["label"] == "topk (2 seeds)" and topk["n"] == 2
    finals = [sum(r["accuracy"] for r in run.rows) / len(run.rows) for run in runs[1:]]  # 4 rounds: all of them
    assert topk["acc"] == pytest.approx(sum(finals) / 2)
    assert topk["acc_sd"] == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5)
    last = runs[0].rows[-1]
    assert fedavg["mb"] == pytest.approx((last["cum_uplink_bytes"] + last["cum_downlink_bytes"]) / 1e6)
    assert topk["mb"] < fedavg["mb"] / 1.5  # 20x fewer bytes up, dense down
    figs = _drawn(monkeypatch)
    assert main(["plot", "--frontier", *map(str, seeded_runs), "--out", str(out)]) == 0
    (ax,) = figs[0].axes
    assert ax.get_xscale() == "log" and "last 10 rounds" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("fedavg: ") and labels[1].startswith("topk (2 seeds): ") and " ± " in labels[1]
    assert main(["plot", "--frontier", str(seeded_runs[0]), "--metric", "loss", "--out", str(out)]) == 2
    assert "not allowed with --frontier" in capsys.readouterr().err


def test_plot_frontier_joins_a_methods_budgets_into_one_curve_per_panel(tmp_path, monkeypatch):
    """curve= joins a method's points (several budgets, each the mean of its seeds) in order of bytes;
    panel= puts each alpha in its own panel; a method keeps its colour in both."""
    from matplotlib.colors import to_rgb

    from e3sfc.report import METHOD_COLORS, load_run, plot_frontier

    runs = []
    for a in (0.1, 1.0):
        for m, budgets in (("topk", (100, 400)), ("e3sfc", (100, 400, 1600))):
            for b in budgets:
                for s in (42, 43):
                    acc = 0.5 + b / 10000 + (s - 42) / 100 + a / 10
                    runs.append(load_run(_hand_run(tmp_path, f"{m}-{b}-alpha{a}-seed{s}", m, [acc] * 3, seed=s,
                                                   per_round=b, alpha=a, samples=b)))
    figs = _drawn(monkeypatch)
    plot_frontier(runs, tmp_path / "f.png", curve=lambda r: r.path.name.split("-")[0],
                  panel=lambda r: f"alpha {r.config['alpha']}")
    (fig,) = figs
    assert len(fig.axes) == 2 and [ax.get_title().split(" / ")[0] for ax in fig.axes] == ["alpha 0.1", "alpha 1.0"]
    for ax, a in zip(fig.axes, (0.1, 1.0)):
        lines = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: (data line, caps, bars)
        assert set(lines) == {"topk (2 seeds)", "e3sfc (2 seeds)"}
        e3 = lines["e3sfc (2 seeds)"]
        assert list(e3.get_xdata()) == pytest.approx([3 * 2 * b / 1e6 for b in (100, 400, 1600)])
        assert list(e3.get_ydata()) == pytest.approx([0.5 + b / 10000 + 0.005 + a / 10 for b in (100, 400, 1600)])
        assert e3.get_color() == to_rgb(METHOD_COLORS["e3sfc"]) and lines["topk (2 seeds)"].get_color() == to_rgb(
            METHOD_COLORS["topk"])


def test_final_accuracy_is_the_mean_of_the_last_10_rounds(tmp_path):
    from e3sfc.report import frontier_points, load_run

    run = load_run(_hand_run(tmp_path, "r", "topk", [t / 100 for t in range(1, 31)]))
    (p,) = frontier_points([run])
    assert p["acc"] == pytest.approx(sum(range(21, 31)) / 1000) and p["mb"] == pytest.approx(30 * 200 / 1e6)


def _hand_made_run(path, seed: int, accs, **config) -> None:
    """A finished run folder as e3sfc run writes it (the files report.load_run reads), made by hand."""
    import json

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"method": "3sfc", "dataset": "fmnist", "model": "mlp",
                                                  "rounds": len(accs), "eval_every": 1, "seed": seed, **config}))
    rows = [{"round": t, "accuracy": a, "uplink_bytes": 100, "downlink_bytes": 300, "cum_uplink_bytes": 100 * t,
             "cum_downlink_bytes": 300 * t, "participants": 1, "seconds": float(t)} for t, a in enumerate(accs, 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps({"dense_bytes_per_transfer": 1000}))


def test_suite_seeds_figure_draws_the_seeds_its_verdicts_average(tmp_path):
    """The seeds group's figure and its verdicts use the same runs: seed 42 from the reference group, the
    others from the seeds group, so the legend's seed count is the count the text averages."""
    from e3sfc.report import _series

    suite = _suite()
    root = tmp_path / "runs"
    for name, extra in (("3sfc", {}), ("3sfc-reference-lbfgs", {"patience": 0})):
        _hand_made_run(root / "reference" / name, 42, (0.5, 0.8), **extra)
        _hand_made_run(root / "seeds" / f"{name}-seed43", 43, (0.5, 0.7), **extra)
    drawn = []
    suite.plot_runs = lambda runs, out, panel=None: drawn.extend(runs)
    suite.write_report(root, {"seeds": {"3sfc-seed43": [], "3sfc-reference-lbfgs-seed43": []}}, tmp_path / "docs")
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "seeds 42, 43: 0.7500 against 0.7500" in text
    assert "Seed 42 of 3sfc, 3sfc-reference-lbfgs is the reference group's run" in text
    assert sorted(label for label, _ in _series(drawn)) == ["3sfc (2 seeds)", "3sfc-reference-lbfgs (2 seeds)"]


def test_suite_anymodel_rivals_get_the_bytes_the_synthesis_fits():
    """anymodel's Top-k and STC budgets are the payloads --payload-bytes fits on quickcnn at 3x32x32 (equal
    bytes), PowerSGD rank 2 fits under 3.2 KB and rank 3 does not; every setting's run has runs of both seeds
    (PowerSGD has none at 1 KB)."""
    import torch

    from e3sfc.compress import make_compressor
    from e3sfc.compress.base import Context
    from e3sfc.federated import get_flat
    from e3sfc.models import build_model

    suite = _suite()
    m = build_model("quickcnn", (3, 32, 32), 10, seed=0)
    ctx = Context(m, get_flat(m), (3, 32, 32), 10, client=-1, generator=torch.Generator().manual_seed(0))
    for _, budget, size in suite.ANYMODEL_BUDGETS:
        assert make_compressor("e3sfc", payload_bytes=budget).fit(ctx)[3] == size
    psgd = {r: make_compressor("powersgd", rank=r, value_bits=8).payload_bytes(ctx) for r in (2, 3)}
    assert psgd[2] <= 3215 < psgd[3]
    runs = suite.anymodel_runs()
    names = [n for _, fed, mine, rivals in suite.anymodel_settings() for n in (fed, *mine.values(), *rivals.values())]
    missing = {n for n in names for s in (42, 43) if f"{n}-seed{s}" not in runs}
    assert missing == {"powersgd-1k-twoway"}
    assert len(runs) == 2 * (len(set(names)) - 1)


def test_suite_frontier_settings_name_the_frontier_runs():
    """Every run a frontier setting compares is one the frontier group runs, at both seeds (PowerSGD has no
    setting near 1 KB), and the published e3sfc is the only run no setting ranks (it is drawn only)."""
    suite = _suite()
    runs = suite.frontier_runs()
    names = {n for _, fed, mine, rivals in suite.frontier_settings() for n in (fed, *mine.values(), *rivals.values())}
    missing = {n for n in names for s in (42, 43) if f"{n}-seed{s}" not in runs}
    assert missing == {"powersgd-1k-alpha0.1", "powersgd-1k-alpha1.0"}
    unused = {r.rsplit("-seed", 1)[0] for r in runs} - names
    assert unused == {"e3sfc-3k-alpha0.1", "e3sfc-3k-alpha1.0"}


def test_suite_frontier_oneway_settings_rank_every_run_and_match_the_frontier_3k_settings():
    """Every frontier-oneway run but FedAvg is ranked in one setting, at both seeds; none sends a compressed
    downlink; each is the frontier's 3.2 KB run of its method (same flags) without the downlink and the seeded
    w_1, and its curve is the method's name."""
    suite = _suite()
    runs, both = suite.frontier_oneway_runs(), suite.frontier_runs()
    ranked = [n for _, _, mine, rivals in suite.frontier_oneway_settings() for n in (*mine.values(), *rivals.values())]
    assert len(ranked) == len(set(ranked)) == 10
    assert {f"{n}-seed{s}" for n in (*ranked, "fedavg-alpha0.1", "fedavg-alpha1.0") for s in (42, 43)} == set(runs)

    def flags(args):
        pairs = dict(zip(args[::2], args[1::2]))
        pairs.pop("--downlink", None), pairs.pop("--init", None)
        return pairs

    twin = {"3sfc-plus": "e3sfc-plus-3k", "3sfc-res": "e3sfc-res-3k", "powersgd": "powersgd-3k",
            "topk-golomb": "topk-golomb-3k", "stc-golomb": "stc-golomb-3k", "fedavg": "fedavg"}
    for name, args in runs.items():
        assert "--downlink" not in args and "--init" not in args
        method, tail = name.split("-alpha")
        other = flags(both[f"{twin[method]}-alpha{tail}"])
        if method.startswith("3sfc"):
            other["--method"] = "3sfc"
        assert flags(args) == other, name
    run = type("Run", (), {"path": Path("/x") / "3sfc-res-alpha0.1-seed43", "config": {"alpha": 0.1}})()
    assert suite.frontier_oneway_curve(run) == "3sfc-res"
    assert "frontier-oneway" in suite.BYTE_GROUPS and "frontier-oneway" in suite.TITLES
    rows = [{"run": n, "acc_last10": acc, "total_mb": 1.0, "seconds_per_round": 1.0}
            for n, acc in (("3sfc-plus-alpha0.1-seed42", 0.78), ("topk-golomb-alpha0.1-seed42", 0.76))]
    v = suite.settings_verdicts(rows, suite.frontier_oneway_settings(), "none")
    assert v[0].startswith("- alpha 0.1, 3.2 KB, one way: 3sfc-plus beats topk-golomb by 2.0 points"), v[0]
    both = [{**r, "run": r["run"].replace("3sfc-plus-", "e3sfc-plus-3k-").replace("topk-golomb-", "topk-golomb-3k-")}
            for r in rows]
    where = suite.VERDICT_WHERE["frontier"]
    v = suite.settings_verdicts(both, suite.frontier_settings(), "none", where)
    assert v[0].startswith("- alpha 0.1, 3.2 KB a payload each way: e3sfc-plus beats topk-golomb by 2.0"), v[0]


def test_suite_frontier_convnet_settings_rank_every_run_and_curves_join_the_seeds():
    """Every frontier-convnet run but FedAvg is ranked in one setting (its way), at both seeds; rivals take
    the downlink of their own method both ways only; a curve joins a method's seeds, keeps one-way and
    both-ways runs apart by panel, and names the published M = 1."""
    suite = _suite()
    runs = suite.frontier_convnet_runs()
    settings = suite.frontier_convnet_settings()
    ranked = [n for _, _, mine, rivals in settings for n in (*mine.values(), *rivals.values())]
    assert len(ranked) == len(set(ranked)) == 14
    assert {f"{n}-seed{s}" for n in (*ranked, "fedavg") for s in (42, 43)} == set(runs)
    for name, args in runs.items():
        assert ("--downlink" in args) == (name.split("-seed")[0].endswith("twoway") and
                                          not name.startswith("e3sfc"))
        assert args[args.index("--train-subset") + 1] == "12000" and args[args.index("--rounds") + 1] == "50"

    def run(name):
        return type("Run", (), {"path": Path("/x") / name})()

    assert suite.anymodel_curve(run("3sfc-plus-oneway-seed43")) == "3sfc-plus"
    assert suite.anymodel_curve(run("3sfc-res-tensor-oneway-seed42")) == "3sfc-res-tensor"
    tensor = runs["3sfc-res-tensor-oneway-seed43"]
    assert tensor == [*runs["3sfc-res-oneway-seed43"][:-2], "--scales", "tensor", "--seed", "43"]
    assert runs["3sfc-res-tensor-data-oneway-seed42"] == [*runs["3sfc-res-tensor-oneway-seed42"][:-2],
                                                          "--feature-init", "data", "--seed", "42"]
    assert suite.anymodel_curve(run("3sfc-res-tensor-data-oneway-seed42")) == "3sfc-res-tensor-data"
    assert suite.anymodel_curve(run("e3sfc-twoway-seed42")) == "e3sfc (published: M = 1, float32)"
    assert suite.anymodel_curve(run("e3sfc-cnn-3k-twoway-seed42")) == "e3sfc-cnn"
    assert suite.anymodel_panel(run("3sfc-res-oneway-seed42")) != suite.anymodel_panel(run("e3sfc-res-twoway-seed42"))


def test_suite_report_says_a_group_not_started_is_not_run_yet(tmp_path):
    """A group with no run folder: "Not run yet" with its command; one with a started run: "Not finished yet"."""
    suite = _suite()
    root, docs = tmp_path / "runs", tmp_path / "docs"
    path = suite.write_report(root, {"frontier-convnet": {"fedavg-seed42": []}}, docs)
    assert "Not run yet (`python experiments/suite.py --groups frontier-convnet`)." in path.read_text()
    (root / "frontier-convnet" / "fedavg-seed42").mkdir(parents=True)
    path = suite.write_report(root, {"frontier-convnet": {"fedavg-seed42": []}}, docs)
    assert "Not finished yet." in path.read_text() and "Not run yet" not in path.read_text()


def _report_of_one_run(tmp_path):
    """A report (figures off) of one hand-made run of the seeds group: (suite, runs root, docs, names, results.md)."""
    suite = _suite()
    root, docs = tmp_path / "runs", tmp_path / "docs"
    _hand_made_run(root / "seeds" / "3sfc-seed43", 43, (0.5, 0.7))
    suite.plot_runs = lambda runs, out, panel=None: None
    names = {"seeds": {"3sfc-seed43": []}}
    return suite, root, docs, names, suite.write_report(root, names, docs)


def test_suite_report_with_nothing_new_leaves_results_md_alone(tmp_path):
    """--report-only with nothing new: a report that would differ only in its date line is not written;
    one with anything else new is."""
    suite, root, docs, names, path = _report_of_one_run(tmp_path)
    old = suite.DATE_LINE.sub("- date: 2000-01-01 00:00 UTC", path.read_text())
    path.write_text(old)
    suite.write_report(root, names, docs)
    assert path.read_text() == old  # nothing new: the old date stays
    _hand_made_run(root / "seeds" / "3sfc-seed44", 44, (0.5, 0.9))
    suite.write_report(root, {"seeds": {"3sfc-seed43": [], "3sfc-seed44": []}}, docs)
    assert "3sfc-seed44" in path.read_text() and "2000-01-01" not in path.read_text()


def test_suite_report_of_some_groups_keeps_the_machine_the_others_were_made_on(tmp_path):
    """--report-only --groups G rebuilds G's section only: the header keeps the machine it named, which the kept
    sections' "machine above" means; a whole report names this machine."""
    suite, root, docs, names, path = _report_of_one_run(tmp_path)
    assert f"- machine: {suite.machine()}" in path.read_text()
    path.write_text(path.read_text().replace(f"- machine: {suite.machine()}", "- machine: Elsewhere, 2 cores"))
    _hand_made_run(root / "seeds" / "3sfc-seed44", 44, (0.5, 0.9))
    two = {"seeds": {"3sfc-seed43": [], "3sfc-seed44": []}}
    suite.write_report(root, two, docs, only=["seeds"])
    assert "- machine: Elsewhere, 2 cores" in path.read_text() and "3sfc-seed44" in path.read_text()
    suite.write_report(root, two, docs)
    assert f"- machine: {suite.machine()}" in path.read_text()


def test_suite_help_lists_the_groups_and_their_runs():
    import subprocess
    import sys
    from pathlib import Path

    suite = _suite()
    r = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "experiments" / "suite.py"), "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for g, runs in suite.groups(suite.REPO / "runs").items():
        assert f"  {g} " in r.stdout
    assert f"about {len(suite.groups(suite.REPO / 'runs')['reference'])} runs of 100 rounds" in r.stdout
    assert "text             about 21 runs of 50 rounds" in r.stdout


def test_every_markdown_table_in_the_docs_has_as_many_cells_in_each_row_as_its_header():
    import re
    from pathlib import Path

    repo = Path(__file__).parents[1]
    for doc in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        table: list[tuple[int, int]] = []
        for i, line in enumerate([*doc.read_text().splitlines(), ""], 1):
            if line.startswith("|"):
                table.append((i, len(re.findall(r"(?<!\\)\|", line))))  # a \| inside a cell is text
                continue
            bad = [n for n, cells in table if cells != table[0][1]] if table else []
            assert not bad, f"{doc.name}: lines {bad} have another cell count than the table's header"
            table = []
