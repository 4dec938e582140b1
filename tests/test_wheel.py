"""The package as a user installs it: a wheel, in a fresh environment, outside the checkout."""

import json
import os
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT

pytestmark = pytest.mark.long


def _run(*command, cwd=None):
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_the_wheel_trains_and_reports_outside_the_checkout(tmp_path):
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", tmp_path / "dist", ROOT)  # fmt: skip
    [wheel] = (tmp_path / "dist").glob("fashion_keras-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
         "--no-deps", wheel)  # fmt: skip
    # TensorFlow and the rest come from the environment running the tests (a .pth line
    # appends its site-packages after the new environment's own, which hold the wheel).
    [site] = (venv / "lib").glob("python3*/site-packages")
    (site / "_reuse_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    cli = venv / "bin" / "fashion-keras"
    code = "import fashion_keras; print(fashion_keras.__file__)"
    where = _run(venv / "bin" / "python", "-c", code, cwd=work)
    assert where.startswith(str(site)), where
    assert _run(cli, "--version", cwd=work).split() == ["fashion-keras", wheel.name.split("-")[1]]
    assert "fast" in _run(cli, "presets", cwd=work)
    # Two epochs: the preset's warm-up epoch, then one at its full rate.
    env_sets = ["training.epochs=2", "data.train_limit=1000", "data.eval_limit=500"]
    _run(cli, "train", "--config", "fast", *[a for s in env_sets for a in ("--set", s)],
         "--output", "run", cwd=work)  # fmt: skip
    assert json.loads((work / "run" / "metrics.json").read_text())["epochs"] == 2
    page = _run(cli, "report", "run", cwd=work).strip()
    assert os.path.samefile(work / page, work / "run" / "report" / "index.html")
    assert "Test accuracy" in (work / "run" / "report" / "index.html").read_text()
