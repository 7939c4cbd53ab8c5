"""The project installs under one namespace, ``flopscale``, and takes no top-level name of
another package (the Hub ``kernels`` package, ``profiler``, ``benchmarks``)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig

import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHORT = ("kernels", "profiler", "lawfit", "benchmarks")


def _declared_packages() -> set[str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(conf["packages"])


def test_every_package_folder_is_installed_under_flopscale():
    found = {"flopscale"}
    for short in SHORT:
        for init in (ROOT / short).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            found.add(".".join(("flopscale", *rel)))
    assert found == _declared_packages()


def test_bare_names_are_refused_from_a_checkout():
    # run from the repository root, where the folders are on sys.path under their bare names
    for short in SHORT:
        proc = subprocess.run([sys.executable, "-c", f"import {short}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        assert f"import it as 'flopscale.{short}'" in proc.stderr


def test_code_imports_only_namespaced_names():
    bare = re.compile(r"^\s*(from|import) (kernels|profiler|lawfit|benchmarks)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for d in (*SHORT, "tests", "flopscale")
                 for p in (ROOT / d).rglob("*.py") if bare.search(p.read_text())]
    assert offenders == []


@pytest.mark.slow
def test_fresh_venv_with_a_foreign_kernels_package(tmp_path):
    """Build the wheel, install it into a new venv beside a dummy top-level ``kernels``
    package: both import, and they are different modules."""
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    for name in ("pyproject.toml", "README.md"):
        src.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for name in ("flopscale", *SHORT):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("flopscale-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch, numpy, ...) come from this environment, read-only, after the venv's own
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    dummy = site / "kernels"
    dummy.mkdir()
    (dummy / "__init__.py").write_text("IDENTITY = 'the other kernels package'\n")
    assert not (site / "profiler").exists() and not (site / "lawfit").exists() and not (site / "benchmarks").exists()
    code = ("import kernels, flopscale\n"
            "from flopscale import kernels as fk, lawfit, profiler\n"
            "assert kernels.IDENTITY == 'the other kernels package'\n"
            "assert fk is not kernels and fk.__name__ == 'flopscale.kernels'\n"
            "assert hasattr(fk, 'matmul') and hasattr(lawfit, 'allocate') and hasattr(profiler, 'Profile')\n"
            "assert all(len(lawfit.datasets.load(n)) > 0 for n in lawfit.datasets.names())\n"
            "print('ok')\n")
    proc = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    cli = subprocess.run([str(env_dir / "bin" / "python"), "-m", "flopscale", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "plan" in cli.stdout
