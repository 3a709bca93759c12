"""Each method declares its options once (compress/*.py: OPTIONS); the run settings, their validation,
the CLI flags and help groups, the TOML keys and the Flower run-config keys all come from that."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from e3sfc.cli import build_parser, method_groups
from e3sfc.compress import available_methods, get_compressor_class, make_compressor
from e3sfc.compress.base import Option
from e3sfc.config import RunConfig, method_settings, options_from_run_config
from e3sfc.errors import ConfigError

# the method knobs' run settings as they were before they moved into the methods (config.json keys and values)
KNOBS = {"samples": 1, "steps": 10, "max_iter": 20, "lambd": 0.0, "patience": 20, "feature_bits": 32,
         "warm_start": False, "scales": "one", "topk_scope": "tensor", "levels": 16, "unroll": 2, "synth_iters": 50,
         "synth_lr": 0.05}
ADDED = {"index_coding": "int32", "rank": 2, "value_bits": 32, "feature_res": 0, "payload_bytes": 0,
         "history": 100, "feature_init": "noise"}  # added since


def test_method_settings_are_the_declared_options_with_the_same_defaults():
    assert {n: o.default for n, o in method_settings().items()} == {**KNOBS, **ADDED}
    d = RunConfig().to_dict()
    assert {k: d[k] for k in KNOBS} == KNOBS and all(type(d[k]) is type(v) for k, v in KNOBS.items())
    for m in available_methods():  # every declared default builds the method
        cls = get_compressor_class(m)
        comp = make_compressor(m)
        assert all(getattr(comp, o.attr or o.name) == o.default for o in cls.options)


def test_option_allowed_text_and_checks():
    assert Option("a", int, 1, "", low=1).allowed() == "an integer >= 1"
    assert Option("a", int, 1, "", low=1, high=9).allowed() == "an integer in 1..9"
    assert Option("a", float, 0.5, "", low=0, low_open=True, high=1).allowed() == "a number in (0, 1]"
    assert Option("a", int, 0, "", low=0, note="0 = off").allowed() == "an integer >= 0 (0 = off)"
    assert Option("a", int, 32, "", choices=(32, 16)).allowed() == "one of 32, 16"
    o = Option("a", float, 1.0, "", low=0, low_open=True)
    assert o.accepts(2) and not o.accepts(0.0) and not o.accepts(float("inf")) and not o.accepts(True)
    assert not Option("a", int, 1, "", low=1).accepts(2.0)


def test_constructor_checks_each_option_against_its_declaration():
    with pytest.raises(ConfigError, match=r"topk: ratio: 2.0 is not allowed; expected a number in \(0, 1\]"):
        make_compressor("topk", ratio=2.0)
    with pytest.raises(ConfigError, match="fedsynth: synth_lr: 0.0 is not allowed; expected a number > 0"):
        make_compressor("fedsynth", synth_lr=0.0)
    with pytest.raises(ConfigError, match="3sfc: unknown option.*bogus"):
        make_compressor("3sfc", bogus=1)
    assert make_compressor("e3sfc", samples=4, feature_bits=8).feature_bits == 8


def test_help_groups_the_method_options_and_shows_each_default_once():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    helps = {a.dest: a.help for a in run._actions}
    for name, o in method_settings().items():
        assert helps[name].count("(default: ") == 1 and helps[name].startswith(o.help)
    titles = [g.title for g in run._action_groups]
    assert titles.index("compression") + 1 == titles.index(next(iter(method_groups())))
    assert method_groups()["options of topk, stc"] == ("topk_scope", "index_coding")
    assert "samples" in method_groups()["options of fedsynth, 3sfc, e3sfc"]


def test_flower_run_config_to_options_and_run_config():
    rc = {"feature-bits": 8, "samples": "4", "num-server-rounds": 3, "lr": 0.1, "scales": ""}
    assert options_from_run_config("3sfc", rc) == {"feature_bits": 8, "samples": 4}
    assert options_from_run_config("topk", {"ratio": "0.1", "topk-scope": "global"}) == \
        {"ratio": 0.1, "topk_scope": "global"}
    with pytest.raises(ConfigError, match="--feature-bits: 12 is not allowed; expected one of 32, 16, 8, 4"):
        options_from_run_config("e3sfc", {"feature-bits": 12})
    cfg = RunConfig.from_run_config({"method": "3sfc", "feature-bits": 16, "samples": 2, "out": ""})
    assert (cfg.feature_bits, cfg.samples, cfg.out) == (16, 2, None)
    with pytest.raises(ConfigError, match="--levels: 0 is not allowed; expected an integer in 1..65535"):
        RunConfig.from_run_config({"method": "qsgd", "levels": 0})


# A new method with one declared option, registered before the run settings are built (as a method file in
# e3sfc/compress is): the option is a CLI flag in the method's help group, a RunConfig field and TOML key
# checked against its bounds, and a Flower run-config key. Own process: the registry and RunConfig are global.
NEW_METHOD = textwrap.dedent('''
    import importlib, re, sys
    import e3sfc.compress as C
    from e3sfc.compress.base import Option
    from e3sfc.compress.fedavg import Dense

    @C.register
    class Toy(Dense):
        name, method_id = "toy", 99
        options = (Option("toy_knob", int, 3, "how toy it is", low=1, high=9),)

    import e3sfc.config, e3sfc.cli
    importlib.reload(e3sfc.config)
    importlib.reload(e3sfc.cli)
    from e3sfc.config import RunConfig, options_from_run_config
    from e3sfc.errors import ConfigError

    help_text = e3sfc.cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert re.search(r"options of toy:\\n +--toy-knob TOY_KNOB +how toy it is \\(default: 3\\)", help_text), help_text
    assert RunConfig().toy_knob == 3 and RunConfig(method="toy", toy_knob=9).to_dict()["toy_knob"] == 9
    assert C.make_compressor("toy", toy_knob=5).toy_knob == 5
    open(sys.argv[1], "w").write('method = "toy"\\ntoy-knob = 7\\n')
    assert RunConfig.from_sources(sys.argv[1]).toy_knob == 7
    assert options_from_run_config("toy", {"toy-knob": "4", "lr": 0.1}) == {"toy_knob": 4}
    for bad, needle in [(dict(method="toy", toy_knob=10), "--toy-knob: 10 is not allowed; expected an integer in 1..9"),
                        (dict(method="fedavg", toy_knob=4), "it is a knob of toy")]:
        try:
            RunConfig(**bad)
            raise SystemExit(f"accepted {bad}")
        except ConfigError as exc:
            assert needle in str(exc), exc
    sys.exit(e3sfc.cli.main(["run", "--method", "toy", "--toy-knob", "0"]))
''')


def test_an_option_declared_in_a_new_method_is_a_flag_a_setting_and_a_key(tmp_path):
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": path}
    r = subprocess.run([sys.executable, "-c", NEW_METHOD, str(tmp_path / "c.toml")], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "e3sfc: error: --toy-knob: 0 is not allowed; expected an integer in 1..9"


def test_runconfig_docstring_lists_every_setting_with_the_cli_help_text():
    """help(RunConfig): every field, its description and default, the very text `e3sfc run --help` shows."""
    from dataclasses import fields

    from e3sfc.config import describe

    doc = RunConfig.__doc__
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    helps = {a.dest: a.help for a in run._actions}
    for f in fields(RunConfig):
        text = describe(f.name)
        assert len(text) > len("(default: x)") and helps[f.name] == text
        entry = doc[doc.index(f"\n    {f.name} : "):].split("\n", 3)
        assert " ".join(entry[2].split()).startswith(" ".join(text.split())[:40]), (f.name, entry)
    assert "(default: 100)" in doc[doc.index("\n    rounds : int"):][:200]


def test_cli_help_imports_no_torch():
    """`e3sfc --help` (and the other commands' parsers but run's and plot-partition's) stay clear of torch."""
    code = ("import sys, e3sfc.cli\n"
            "try:\n    e3sfc.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "e3sfc.cli.build_parser(lazy=True).parse_args(['compare', 'x'])\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith(('torch', 'e3sfc')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: e3sfc" in r.stdout, r.stderr[-2000:]
