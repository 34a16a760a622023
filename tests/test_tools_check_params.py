"""`wsss check-params`: what it prints for valid params and which file it names."""

from pathlib import Path

from wsss.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_the_valid_line_names_every_file_it_merged(capsys, monkeypatch):
    """It printed "params.yaml: valid" with overrides given, while `wsss run` printed
    "params.yaml + configs/smoke.yaml: valid": both name every merged file now."""
    monkeypatch.chdir(REPO)
    assert main(["check-params", "--configfile", "configs/smoke.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "params.yaml + configs/smoke.yaml: valid (1 datasets x 2 methods x 1 seeds)"
    )
    assert main(["check-params"]) == 0
    assert capsys.readouterr().out.startswith("params.yaml: valid (")


def test_a_bad_override_is_named_in_the_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    bad = tmp_path / "bad.yaml"
    bad.write_text("method_params: {aream: {weight: heavy}}\n")
    assert main(["check-params", "--configfile", str(bad)]) != 0
    err = capsys.readouterr().err
    assert f"{bad} is invalid:" in err and "method_params.aream.weight" in err


def test_overrides_may_follow_the_params_file(capsys, monkeypatch):
    """`wsss check-params params.yaml configs/smoke.yaml` (as merge-params takes files) was a
    usage error of the top-level parser."""
    monkeypatch.chdir(REPO)
    assert main(["check-params", "params.yaml", "configs/smoke.yaml"]) == 0
    assert capsys.readouterr().out.startswith("params.yaml + configs/smoke.yaml: valid (")
