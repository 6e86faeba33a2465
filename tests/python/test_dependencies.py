"""Every module the project's Python imports is installed by scripts/setup.sh, from a Debian package.

The list comes from the imports themselves (python/, tests/, benchmarks/, scripts/, examples/ and the
notebook's code cells), so a new import without its package fails here on any machine, not only on a
fresh one."""
import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("python", "tests", "benchmarks", "scripts", "examples")
# Where a module's Debian package is not python3-<module>.
PACKAGE_OF_MODULE = {"cv2": "python3-opencv", "PIL": "python3-pil", "yaml": "python3-yaml", "skimage": "python3-skimage",
                     "nbformat": "python3-nbformat", "nbconvert": "jupyter-nbconvert"}


def python_sources():
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, path.read_text()
        for path in sorted((ROOT / folder).rglob("*.ipynb")):
            cells = json.loads(path.read_text())["cells"]
            code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
            yield path, "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))


def imported_modules():
    """{top-level module: first file importing it}, without the standard library and the project's own."""
    local = {"bloodcv"} | {p.stem for folder in SOURCE_DIRS for p in (ROOT / folder).rglob("*.py")}
    found = {}
    for path, text in python_sources():
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, path.relative_to(ROOT))
    return found


def setup_packages():
    text = (ROOT / "scripts" / "setup.sh").read_text()
    body = re.search(r"PACKAGES=\((.*?)\n\)", text, re.S).group(1)
    return {word for line in body.splitlines() for word in line.split("#")[0].split()}


def owning_package(module):
    spec = importlib.util.find_spec(module)
    origin = spec.origin if spec.origin not in (None, "built-in", "frozen") else next(iter(spec.submodule_search_locations or []), None)
    result = subprocess.run(["dpkg", "-S", os.path.realpath(origin)], capture_output=True, text=True)
    if result.returncode != 0:
        return None, origin
    return {p.strip().split(":")[0] for p in result.stdout.split(":")[0].split(",")}, origin


def test_the_scan_sees_the_projects_imports():
    modules = imported_modules()
    assert {"numpy", "torch", "pytest", "cv2", "sklearn"} <= set(modules)
    assert "bloodcv" not in modules and "json" not in modules


def test_every_imported_module_comes_from_a_package_setup_installs():
    packages = setup_packages()
    problems = []
    for module, where in sorted(imported_modules().items()):
        expected = PACKAGE_OF_MODULE.get(module, f"python3-{module.lower()}")
        if importlib.util.find_spec(module) is None:
            problems.append(f"{module} (imported by {where}) is not installed: add the Debian package {expected} to scripts/setup.sh")
            continue
        owners, origin = owning_package(module)
        if owners is None:
            problems.append(f"{module} (imported by {where}) comes from {origin}, which no Debian package owns (pip or by hand?): "
                            f"install {expected} from scripts/setup.sh instead")
        elif not owners & packages:
            problems.append(f"{module} (imported by {where}) comes from the Debian package {'/'.join(sorted(owners))}, "
                            "which scripts/setup.sh does not install")
    assert not problems, "\n".join(problems)
