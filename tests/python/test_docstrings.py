"""Every public name of bloodcv and bloodcv.eval explains itself in help(): the class or function, and each
public method and property of a class, has a docstring with prose beyond the signature lines that
pybind11 writes on its own."""
import inspect
import re

import pytest

import bloodcv
import bloodcv.eval

MIN_PROSE = 20  # characters: more than a signature or a stray word

# pybind11's own lines: "name(arg: type, ...) -> type", "1. name(...)" for overloads, and "Overloaded function."
SIGNATURE = re.compile(r"^\s*(\d+\.\s+)?[A-Za-z_][\w.]*\(.*\)(\s*->\s*.+)?\s*$")


def prose(doc):
    """The docstring without its signature lines, whitespace collapsed."""
    lines = [line for line in (doc or "").splitlines()
             if not SIGNATURE.match(line) and line.strip() != "Overloaded function."]
    return " ".join(" ".join(lines).split())


def public_members(cls):
    """Methods and properties that cls itself defines: public ones, and __init__ and __call__."""
    for name, member in vars(cls).items():
        if name.startswith("_") and name not in ("__init__", "__call__"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if callable(member) or inspect.isdatadescriptor(member):
            yield name, member


PUBLIC = [(f"{module.__name__}.{name}", getattr(module, name))
          for module in (bloodcv, bloodcv.eval) for name in module.__all__]
DOCUMENTED = [(name, obj) for name, obj in PUBLIC if inspect.isclass(obj) or callable(obj)]  # not __version__
CLASSES = [(name, obj) for name, obj in DOCUMENTED if inspect.isclass(obj)]


def test_signature_lines_are_not_prose():
    init = "__init__(self: bloodcv._core.GridTiler, tile_size: Tuple[int, int] = (640, 640)) -> None\n"
    overloaded = "f(*args, **kwargs)\nOverloaded function.\n\n1. f(self: A, x: int) -> int\n\n2. f(self: A) -> None\n"
    assert prose(init) == "" and prose(overloaded) == "" and prose(None) == ""
    assert prose(init + "\nCuts images into tiles of tile_size (width, height) in pixels.\n").startswith("Cuts images")


def test_the_new_eval_functions_are_public():
    assert {"read_image_ids", "select_images"} <= set(bloodcv.eval.__all__)


@pytest.mark.parametrize("name, obj", DOCUMENTED, ids=[name for name, _ in DOCUMENTED])
def test_public_name_has_prose(name, obj):
    assert len(prose(obj.__doc__)) >= MIN_PROSE, f"{name} has no docstring beyond its signature: {obj.__doc__!r}"


@pytest.mark.parametrize("name, cls", CLASSES, ids=[name for name, _ in CLASSES])
def test_class_members_have_prose(name, cls):
    missing = [member for member, value in public_members(cls) if len(prose(value.__doc__)) < MIN_PROSE]
    assert not missing, f"{name}: no docstring beyond the signature on {', '.join(missing)}"
