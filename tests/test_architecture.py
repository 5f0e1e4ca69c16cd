"""The package's structure: one installed namespace, imports that run one way.

``orbitgraph.preprocess`` and ``orbitgraph.model`` import neither each other nor
``orbitgraph.train``; the root package ``orbitgraph`` imports none of the rooms at import
time (its public names load lazily). See docs/architecture.md.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("preprocess", "model", "train")
# the rooms each room may import (besides the root package, which every room may import)
ALLOWED = {"preprocess": set(), "model": set(), "train": {"preprocess", "model"}}


def imported_modules(path: Path, runtime_only: bool = False) -> set[str]:
    """Every module an import statement of ``path`` names, at any depth (functions too);
    with ``runtime_only``, not those under ``if TYPE_CHECKING:`` (they never run)."""
    tree = ast.parse(path.read_text(), str(path))
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def rooms_imported(path: Path) -> set[str]:
    """The rooms (``preprocess``, ``model``, ``train``) that ``path`` imports, under the
    namespace or (a leftover of the old layout) as top-level packages."""
    found = set()
    for name in imported_modules(path):
        parts = name.split(".")
        if parts[0] == "orbitgraph" and len(parts) > 1 and parts[1] in ROOMS:
            found.add(parts[1])
        elif parts[0] in ROOMS:
            found.add(parts[0])
    return found


@pytest.mark.parametrize("room", ROOMS)
def test_imports_run_one_way(room):
    """model/ and preprocess/ import no other room; train/ may import both."""
    wrong = {}
    for path in sorted((ROOT / room).rglob("*.py")):
        bad = rooms_imported(path) - ALLOWED[room] - {room}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"{room}/ imports rooms it must not: {wrong}"


def test_no_top_level_room_imports():
    """Every import names the namespace: ``import train`` would find a user's train.py."""
    wrong = [str(p.relative_to(ROOT)) for d in (*ROOMS, "orbitgraph", "tests", "benchmarks")
             for p in sorted((ROOT / d).rglob("*.py"))
             if "_out" not in p.relative_to(ROOT).parts  # benchmark outputs (mace-torch's venv)
             and any(n.split(".")[0] in ROOMS for n in imported_modules(p))]
    assert not wrong, f"top-level imports of preprocess/model/train in {wrong}"


def test_root_package_imports_no_room():
    """``import orbitgraph`` loads none of the rooms (a build process never needs torch)."""
    code = ("import sys, orbitgraph; "
            "print(sorted(m for m in sys.modules if m.startswith('orbitgraph.') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"


def module_name(path: Path) -> str:
    """``preprocess/store/reader.py`` -> ``orbitgraph.preprocess.store.reader``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "orbitgraph" else ["orbitgraph", *parts])


def test_no_import_circles():
    """No module imports itself through others, lazy (in-function) imports included (type
    annotations' imports under ``if TYPE_CHECKING:`` aside): each concept's module sits
    above the modules it uses."""
    modules = {module_name(p): p for d in ("orbitgraph", *ROOMS)
               for p in sorted((ROOT / d).rglob("*.py"))}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path, runtime_only=True):
            # `from orbitgraph.x import y` may name the module orbitgraph.x.y or a name in x
            for candidate in (imported, imported.rpartition(".")[0]):
                if candidate in modules and candidate != name:
                    targets.add(candidate)
                    break
        edges[name] = targets
    # a package's __init__ re-exporting its modules is not a circle of concepts
    packages = {n for n, p in modules.items() if p.name == "__init__.py"}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges[node] - packages:
                if nxt == start:
                    return path
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    circles = {tuple(sorted(c)) for n in modules if n not in packages
               for c in [cycle_from(n)] if c}
    assert not circles, f"import circles: {sorted(circles)}"


def test_the_detector_sees_a_planted_violation(tmp_path):
    """The checks above would fail on a wrong import, at any depth of a module."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from orbitgraph.train.collate import collate\n"
                       "import preprocess.graph\n")
    assert rooms_imported(planted) == {"train", "preprocess"}


def exception_classes(path: Path) -> list[str]:
    """Names of the classes ``path`` defines on a base named ``...Error`` or ``...Exception``
    (``ValueError``, ``StoreError``, ``errors.InputError``...)."""
    def base_name(node) -> str:
        return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return [node.name for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.ClassDef)
            and any(base_name(b).endswith(("Error", "Exception")) for b in node.bases)]


# the package's exception types outside the user errors' tree: a build process that died
# (status 1, a crash the user did not cause, printed as one line), and the marker of a frame
# ASE could not read (a value among the parsed frames, never raised)
NOT_USER_ERRORS = {"orbitgraph.preprocess.cluster.BuildProcessError",
                   "orbitgraph.preprocess.sources.extxyz._Unparsed"}


def test_every_error_type_is_a_user_error():
    """One tree of user errors (orbitgraph/errors.py): every exception type that the package
    defines derives from OrbitgraphError, which the command prints as one line; any other
    exception is a defect and keeps its traceback."""
    import importlib

    from orbitgraph.errors import OrbitgraphError

    found, outside = [], []
    for path in sorted(p for d in ("orbitgraph", *ROOMS) for p in (ROOT / d).rglob("*.py")):
        names = exception_classes(path)
        if not names:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        module = importlib.import_module(".".join(parts if parts[0] == "orbitgraph"
                                                  else ("orbitgraph", *parts)))
        for name in names:
            qualified = f"{module.__name__}.{name}"
            found.append(qualified)
            if not issubclass(getattr(module, name), OrbitgraphError) and \
                    qualified not in NOT_USER_ERRORS:
                outside.append(qualified)
    assert "orbitgraph.preprocess.build.EmptyStoreError" in found  # the detector sees them
    assert not outside, f"error types outside orbitgraph.errors.OrbitgraphError: {outside}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy of the sources: a build writes build/ and *.egg-info beside them
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("orbitgraph", *ROOMS):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(out), str(source)], check=True, capture_output=True)
    (path,) = out.glob("orbitgraph-*.whl")
    return path


def test_wheel_installs_one_namespace(wheel, tmp_path):
    """A fresh venv's site-packages holds ``orbitgraph`` (with its three rooms) and no
    top-level ``preprocess``, ``model`` or ``train``; a user's ``train.py`` and ``model.py``
    in the working directory shadow nothing."""
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"orbitgraph"}

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    installed = {p.name for p in site.iterdir()}
    assert "orbitgraph" in installed and not installed & set(ROOMS)
    assert {p.name for p in (site / "orbitgraph").iterdir()} >= set(ROOMS)
    # the dependencies (torch, numpy...) from this environment, after the fresh venv's own
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    user = tmp_path / "user"
    user.mkdir()
    for name in ROOMS:
        (user / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py')\n")
    code = ("import orbitgraph, orbitgraph.train.calculator, orbitgraph.preprocess.build; "
            "print(orbitgraph.train.calculator.__file__); print(orbitgraph.knn_graph.__name__)")
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=user)
    assert run.returncode == 0, run.stderr
    calculator_file, knn = run.stdout.split()
    assert Path(calculator_file).is_relative_to(site / "orbitgraph" / "train")
    assert knn == "knn_graph"
