"""The distribution (what `pip install .` and deploy/Dockerfile install): one import package, every runtime file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("binormal", "common", "worker", "ingest", "web")  # what deploy/Dockerfile copies
SUBPACKAGES = ("common", "worker", "ingest", "web")  # the folders binormal/<name> links to


def _build_wheel(tmp_path: Path) -> Path:
    # What deploy/Dockerfile copies, into a clean tree: no build/ or egg-info of
    # an earlier build can lend the wheel a file the project's metadata forgets.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=170,
    )
    [wheel] = out.glob("binormal-*.whl")
    return wheel


def _runtime_files() -> set[str]:
    """Every file of the package as installed: ``binormal/...`` and ``binormal/<subpackage>/...``."""
    own = ROOT / "binormal"
    files = {  # binormal/ itself and its own subpackages (commands, feed), not the linked folders
        str(p.relative_to(ROOT))
        for p in own.rglob("*")
        if p.is_file() and p.relative_to(own).parts[0] not in SUBPACKAGES and "__pycache__" not in p.parts
    }
    for sub in SUBPACKAGES:
        files |= {
            f"binormal/{sub}/{p.relative_to(ROOT / sub)}"
            for p in (ROOT / sub).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
    return files


@pytest.mark.timeout(240)
def test_the_wheel_installs_one_import_package_with_every_runtime_file(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    wanted = _runtime_files()
    assert any(n.startswith("binormal/common/lua/") for n in wanted)
    assert any(n.startswith("binormal/web/static/") for n in wanted)
    assert wanted - names == set()
    assert "binormal = binormal.cli:entry" in scripts

    # Into a fresh venv: its site-packages gains exactly one import name, binormal.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    )
    before = set(p.name for p in site.iterdir()) if site.exists() else set()
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    added = {p.name for p in site.iterdir()} - before
    assert {n for n in added if not n.endswith(".dist-info")} == {"binormal"}, added
    installed = {str(p.relative_to(site)) for p in (site / "binormal").rglob("*") if "__pycache__" not in p.parts}
    assert wanted - installed == set()
    assert not any((site / name).exists() for name in SUBPACKAGES)  # no top-level common/, web/, ...
    assert sysconfig.get_paths()["purelib"] != str(site)  # really another environment


def test_the_subpackages_are_links_to_the_design_cards_folders() -> None:
    """binormal/common etc. are the repository's top-level folders, not copies that could drift."""
    for sub in SUBPACKAGES:
        link = ROOT / "binormal" / sub
        assert link.is_symlink() and link.resolve() == (ROOT / sub).resolve(), link


def test_no_module_imports_a_top_level_common_web_ingest_or_worker() -> None:
    """Everything imports as binormal.*: a stray ``from common import`` would load a second copy."""
    import re

    bad = re.compile(r"^\s*(from|import)\s+(common|web|ingest|worker)\b", re.M)
    offenders = {
        str(p.relative_to(ROOT))
        for folder in (*FOLDERS, "tests", "benchmarks")
        for p in (ROOT / folder).rglob("*.py")
        if bad.search(p.read_text())
    }
    assert offenders == set()
