"""The wheel ships every package and subpackage, and every module the `mmar` CLI imports.

The build runs offline, in a copy of the source tree under pytest's tmp dir (the repo is never written
to), with the venv's own setuptools called as the PEP 517 backend in a subprocess. setuptools < 70.1
without the `wheel` package has no bdist_wheel command; there the same setuptools config is checked
through `build_py`, which is the step that decides which files bdist_wheel puts in the wheel, and a
warning says so.
"""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmar", "tokenizers_vq", "heads", "trainers", "demos")
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "runs", "*.egg-info", "build", "dist", "__pycache__", ".pytest_cache", "*.pyc"
)

_HAS_BDIST_WHEEL = (
    "import importlib.util as u, sys\n"
    "sys.exit(0 if u.find_spec('setuptools.command.bdist_wheel') or u.find_spec('wheel.bdist_wheel') else 1)"
)
_BUILD_WHEEL = "import sys\nfrom setuptools import build_meta\nprint(build_meta.build_wheel(sys.argv[1]))"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


class Built:
    """What a wheel built from the copy holds: archive paths (posix) and its entry_points.txt."""

    def __init__(self, src: Path, names: set[str], entry_points: str, how: str):
        self.src, self.names, self.entry_points, self.how = src, names, entry_points, how


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE, symlinks=True)

    if _run(["-c", _HAS_BDIST_WHEEL], src).returncode == 0:
        out = tmp / "wheel"
        out.mkdir()
        proc = _run(["-c", _BUILD_WHEEL, str(out)], src)
        _check(proc, "setuptools.build_meta.build_wheel")
        (wheel,) = out.glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
            entry_points = zf.read(ep).decode()
        return Built(src, names, entry_points, f"wheel {wheel.name}")

    import setuptools

    warnings.warn(
        f"setuptools {setuptools.__version__} has no bdist_wheel and `wheel` is not installed: "
        "checked the files build_py stages for the wheel instead of a built wheel",
        stacklevel=1,
    )
    lib, egg = tmp / "lib", tmp / "egg"
    egg.mkdir()
    proc = _run(
        ["-c", "import setuptools; setuptools.setup()", "-q",
         "egg_info", "--egg-base", str(egg), "build_py", "--build-lib", str(lib)],
        src,
    )
    _check(proc, "setuptools egg_info + build_py")
    names = {p.relative_to(lib).as_posix() for p in lib.rglob("*") if p.is_file()}
    (ep,) = egg.glob("*.egg-info/entry_points.txt")
    return Built(src, names, ep.read_text(), "setuptools build_py staging")


def _source_modules(src: Path) -> list[str]:
    found = []
    for pkg in PACKAGES:
        for path in (src / pkg).rglob("*.py"):
            rel = path.relative_to(src)
            if {"__pycache__", "tests"} & set(rel.parts):
                continue
            found.append(rel.as_posix())
    return sorted(found)


def test_every_source_module_ships(built):
    modules = _source_modules(built.src)
    assert "mmar/data/__init__.py" in modules and "mmar/evaluation/__init__.py" in modules
    missing = [m for m in modules if m not in built.names]
    assert not missing, (
        f"not in the {built.how} (check [tool.setuptools.packages.find]; a folder needs __init__.py): {missing}"
    )
    for required in ("mmar/data/__init__.py", "mmar/evaluation/__init__.py", "mmar/cli.py"):
        assert required in built.names, f"{required} not in the {built.how}"


def test_only_the_packages_ship(built):
    tops = {n.split("/", 1)[0] for n in built.names if "/" in n and ".dist-info/" not in n}
    assert tops <= set(PACKAGES), f"unexpected top-level entries in the {built.how}: {sorted(tops - set(PACKAGES))}"
    assert not [n for n in built.names if n.endswith(".png")], "demos/assets/*.png are meant to stay out of the wheel"


def _module_files(module: str, src: Path) -> list[tuple[str, ...]]:
    """For a dotted module: each parent package's __init__.py, then the module as file or package."""
    parts = module.split(".")
    need = [(("/".join(parts[:i]) + "/__init__.py"),) for i in range(1, len(parts))]
    leaf = "/".join(parts)
    need.append((f"{leaf}.py", f"{leaf}/__init__.py"))
    return need


def _cli_imports(src: Path) -> set[str]:
    """Every module of the five packages that mmar/cli.py imports, at top level or inside functions."""
    tree = ast.parse((src / "mmar" / "cli.py").read_text(), filename="mmar/cli.py")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative to the package of mmar/cli.py, i.e. `mmar`
                base = ["mmar"] if node.level == 1 else []
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module:
                found.add(module)
            for alias in node.names:  # `from mmar import config` imports the submodule too
                sub = f"{module}.{alias.name}" if module else alias.name
                path = src / Path(*sub.split("."))
                if alias.name != "*" and (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()):
                    found.add(sub)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def test_every_module_the_cli_imports_ships(built):
    modules = _cli_imports(built.src)
    assert modules, "found no imports of the project's packages in mmar/cli.py"
    missing = {}
    for module in sorted(modules):
        for options in _module_files(module, built.src):
            if not any(o in built.names for o in options):
                missing[module] = " or ".join(options)
    assert not missing, f"modules mmar/cli.py imports that are not in the {built.how}: {missing}"


def test_console_script_entry_point(built):
    parser = configparser.ConfigParser()
    parser.read_string(built.entry_points)
    assert parser.has_section("console_scripts"), built.entry_points
    assert parser.get("console_scripts", "mmar", fallback=None) == "mmar.cli:main", built.entry_points
