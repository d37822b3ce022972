"""The pip pins (requirements.txt) and the conda environment (environment.yml) list the same dependencies."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _pins(lines):
    return {l.split("==")[0].lower(): l.split("==")[1] for l in lines if "==" in l and not l.startswith("#")}


def test_environment_yml_agrees_with_requirements():
    req = _pins([l.strip() for l in (REPO / "requirements.txt").read_text().splitlines()])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip_lists, "environment.yml has no pip section"
    assert _pins(pip_lists[0]) == req
    for name in ("torch", "torchvision", "pydensecrf2", "snakemake", "dvc", "pandas", "matplotlib"):
        assert name in req


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    req = _pins([l.strip() for l in (REPO / "requirements.txt").read_text().splitlines()])
    for name in ("torch", "torchvision", "snakemake", "dvc"):
        assert version(name).split("+")[0] == req[name]
