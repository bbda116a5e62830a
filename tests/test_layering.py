"""The house: awm's rooms import only rooms below them, and the shared pieces at the top of the
package import no room. Read from the source (ast), so a lazy import inside a function counts."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "awm")
ORDER = ["readers", "method", "witnesses", "comparison", "tree", "library", "suites"]     # bottom up
SHARED = {"errors", "atomic", "allocator", "version", "results", "devices", "executors"}    # used by every room
FACES = {"cli", "api", "console", "demo", "__init__", "__main__"}                           # use the rooms


def module_files():
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__"), path


def imported_modules(path):
    """Every awm module a file names in an import statement, wherever the statement stands."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "awm"}


def place(module):
    """'awm.tree.build' -> 'tree'; 'awm.errors' -> 'errors'; 'awm' -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def room_imports():
    edges = set()
    for module, path in module_files():
        source = place(module)
        for target in imported_modules(path):
            destination = place(target)
            if destination and destination != source:
                edges.add((source, destination, module))
    return edges


def test_every_module_sits_in_a_room_or_is_a_known_top_level_piece():
    top = {module.split(".")[1] for module, _ in module_files() if module.count(".") == 1}
    known = set(ORDER) | SHARED | FACES
    assert top <= known, f"modules at the top of awm/ that are neither rooms, shared pieces nor faces: {sorted(top - known)}"
    assert len(top - set(ORDER) - {"__init__", "__main__"}) <= 15


@pytest.mark.parametrize("room", ORDER)
def test_rooms_import_only_rooms_below_them_and_shared_pieces(room):
    below = set(ORDER[:ORDER.index(room)]) | SHARED
    wrong = sorted((module, destination) for source, destination, module in room_imports()
                   if source == room and destination not in below)
    assert not wrong, f"{room} imports upward or a face: {wrong}"


def test_shared_pieces_import_no_room():
    wrong = sorted((module, destination) for source, destination, module in room_imports()
                   if source in SHARED and destination not in SHARED)
    assert not wrong, wrong


def test_every_room_says_its_job():
    for room in ORDER:
        tree = ast.parse(open(os.path.join(PACKAGE, room, "__init__.py"), encoding="utf-8").read())
        doc = ast.get_docstring(tree)
        assert doc and 2 <= len(doc.strip().splitlines()) <= 5, f"awm/{room}/__init__.py: a docstring of two to five lines"


def test_every_module_opens_with_a_docstring():
    missing = [path for module, path in module_files()
               if not ast.get_docstring(ast.parse(open(path, encoding="utf-8").read()))]
    assert not missing, missing
