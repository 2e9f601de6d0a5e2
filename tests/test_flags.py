"""Every entry script's flags: built with nanochat.common.ScriptParser, so usage lines read
`python -m scripts.X`, each default shows once, and karpathy/nanochat's underscore spellings work.

One subprocess imports every script up to its parse_args() (torch is imported once) and hands the
parser back; the scripts' own work never runs."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from nanochat.common import ScriptParser

SCRIPTS = sorted(p.stem for p in (REPO / "scripts").glob("*.py") if p.stem != "__init__")

# Run in a subprocess: parse_args() is replaced by one that returns the parser, and each script is
# run as __main__ until that point.
PROBE = r'''
import argparse, json, runpy, sys

class Parsed(Exception):
    pass

def capture(self, args=None, namespace=None):
    raise Parsed(self)

argparse.ArgumentParser.parse_args = capture
report = {}
for name in sys.argv[1:]:
    try:
        runpy.run_module(f"scripts.{name}", run_name="__main__")
        report[name] = {"error": "parse_args() was never called"}
        continue
    except Parsed as e:
        parser = e.args[0]
    unknown = []  # long flags whose underscore spelling is not recognised
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and "-" in flag[2:]:
                value = [] if action.nargs == 0 else [str(action.choices[0] if action.choices else
                                                          action.default if action.default is not None else 1)]
                _, extra = parser.parse_known_args([flag.replace("-", "_").replace("__", "--", 1), *value])
                if extra:
                    unknown.append(flag)
    report[name] = {"help": parser.format_help(), "class": type(parser).__name__, "unknown": unknown,
                    "flags": [a.option_strings for a in parser._actions]}
print("REPORT " + json.dumps(report))
'''


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NANOCHAT_BASE_DIR": str(tmp_path_factory.mktemp("flags"))}
    proc = subprocess.run([sys.executable, "-c", PROBE, *SCRIPTS], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")), None)
    assert line, proc.stderr[-3000:]
    return json.loads(line[len("REPORT "):])


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_flags(report, script):
    r = report[script]
    assert r.get("class") == "ScriptParser", r
    help = r["help"]
    assert help.startswith(f"usage: python -m scripts.{script} ")
    for entry in help.split("\n  -")[1:]:  # one option's help each
        assert entry.count("default") <= 1 and "(default: None)" not in entry, entry
    assert r["unknown"] == [], f"underscore spellings not accepted: {r['unknown']}"


def test_shared_meanings_share_short_flags(report):
    # a meaning has one short flag everywhere, and a short flag one meaning
    meanings = {"-i": "--source", "-g": "--model-tag", "-s": "--step", "-t": "--temperature", "-k": "--top-k"}
    for script, r in report.items():
        for flags in r["flags"]:
            for short, long in meanings.items():
                if long in flags and not (script == "tok_train" and long == "--source"):  # there: the data source
                    assert short in flags, (script, flags)
                if short in flags:
                    assert long in flags, (script, flags)


def test_underscore_aliases():
    parser = ScriptParser("scripts/base_train.py", "x")
    parser.add_argument("--device-batch-size", type=int, default=32, help="sequences per forward pass")
    parser.add_argument("--resume", action="store_true", help="continue")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(["--device_batch_size=8", "--resume", "--", "--not_a_flag"])
    assert (args.device_batch_size, args.resume, args.rest) == (8, True, ["--not_a_flag"])
    assert parser.parse_args(["--device_batch_size", "4"]).device_batch_size == 4
    assert parser.prog == "python -m scripts.base_train"
