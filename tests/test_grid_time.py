"""benchmarks/grid_time.py: a logged run's jobs grouped by rule and seed, and its
section of results/bench.md replaced in place."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from grid_time import BEGIN, END, replace_section, seed_jobs  # noqa: E402

LOG = """\
[Sat Dec  5 09:05:30 2026]
localrule prepare_data:
    jobid: 1
    wildcards: dataset=synthetic
[Sat Dec  5 09:05:34 2026]
Finished jobid: 1 (Rule: prepare_data)
[Sat Dec  5 09:05:34 2026]
rule train:
    jobid: 2
    wildcards: dataset=synthetic, train=doei, seed=0
[Sat Dec  5 09:05:35 2026]
rule cams_doei:
    jobid: 3
    wildcards: dataset=synthetic, split=train, seed=1
[Sat Dec  5 09:05:45 2026]
Finished jobid: 3 (Rule: cams_doei)
[Sat Dec  5 09:06:34 2026]
Finished jobid: 2 (Rule: train)
"""


def test_jobs_by_rule_and_seed(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(LOG)
    assert seed_jobs(log) == {
        "prepare_data": {"": [4.0]},
        "train": {"0": [60.0]},
        "cams": {"1": [10.0]},
    }


def test_section_replaced_and_the_rest_kept(tmp_path):
    md = tmp_path / "bench.md"
    md.write_text("# bench\n\nbefore\n")
    replace_section(md, "first\n")
    md.write_text(md.read_text() + "after\n")
    replace_section(md, "second\n")
    text = md.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "first" not in text and "second" in text
    assert text.startswith("# bench\n\nbefore\n") and text.endswith("after\n")
