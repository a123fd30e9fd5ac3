"""The wheel: built and installed offline, it carries every shipped ONNX template and the
tensor layouts, and the installed copy fills and runs a template where torch cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from restorer.zoo.templates import read_index

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_templates_and_runs_them_without_torch(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(wheels)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("restorer-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"restorer/data/templates/{name}" for name in read_index()}
    assert shipped and shipped <= names, sorted(shipped - names)[:5]
    assert {"restorer/data/templates/index.json", "restorer/data/layouts.json.gz"} <= names

    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                              "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    code = ("import sys; sys.modules['torch'] = None\n"
            "import restorer\n"
            f"assert restorer.__file__.startswith({str(site)!r}), restorer.__file__\n"
            "from restorer_ui.app import template_check\n"
            "print(template_check())\n")
    env = {**os.environ, "PYTHONPATH": str(site), "RESTORER_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "template filled" in run.stdout
