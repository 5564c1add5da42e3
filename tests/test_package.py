"""The distribution (what `pip install .` and deploy/Dockerfile install) carries every runtime file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("binormal", "common", "worker", "ingest", "web")


@pytest.mark.timeout(180)
def test_wheel_holds_modules_lua_scripts_static_files_and_the_console_script(tmp_path: Path) -> None:
    # What deploy/Dockerfile copies, into a clean tree: no build/ or egg-info of
    # an earlier build can lend the wheel a file the project's metadata forgets.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=170,
    )
    [wheel] = out.glob("binormal-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    wanted = {
        str(p.relative_to(ROOT))
        for package in PACKAGES
        for p in (ROOT / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert any(n.startswith("common/lua/") for n in wanted) and any(n.startswith("web/static/") for n in wanted)
    assert wanted - names == set()
    assert "binormal = binormal.cli:main" in scripts
