"""The house's floor rule, read from the imports of drdaemon/ and trainer/ (ast, nothing is imported).

The rule (bottom up; a module may import its own floor and the floors below, never above):

0. ``drdaemon.kernels``: pure kernels (numpy, OpenCV, SciPy), nothing of the project;
1. ``drdaemon`` (its ``__init__``), ``drdaemon.defaults``, ``drdaemon.errors``, ``drdaemon.exits``
   and the physics generator ``drdaemon.physics``;
2. ``drdaemon.model``: the network;
3. ``drdaemon.io``: readers, writers, weights, sidecar;
4. ``drdaemon.config``, ``drdaemon.logs``, ``drdaemon.pipeline`` (the configuration and its step models);
5. ``drdaemon.engines``, ``drdaemon.folders``;
6. ``drdaemon.service``;
7. ``drdaemon.evaluate``, ``drdaemon.bench``;
8. ``drdaemon.cli``, ``drdaemon.__main__``, ``drdaemon.synth`` (command lines).

No import cycle between two packages (a cycle inside one package is that package's business).
Imports under ``if TYPE_CHECKING:`` are left out: they exist for annotations only.

The trainer's rooms (``trainer.shared``, ``trainer.clip``, ``trainer.cyclegan``,
``trainer.radiograph``) may import drdaemon's kernels, floor 1, the network, io and the
configuration, never the evaluation, an engine, the folders, the service, the bench or a command
line (``*.cli``, ``__main__``, ``drdaemon.synth``); the metrics they grade with (PSNR, SSIM) are
kernels. The trainer's top-level modules are its command lines, on the command lines' floor:
they may also use the evaluation's library (``python -m trainer.oracle`` scores its fits with
it), never an engine, the service, the bench or another command line. Inside the trainer: ``trainer.shared`` imports no scheme; ``trainer.clip``
imports only ``trainer.shared``, ``trainer.cyclegan`` also ``trainer.clip`` (its feature priors); ``trainer.radiograph`` imports
``trainer.shared`` and ``trainer.clip``; the top-level modules (the command lines) import any room.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.testkit import REPO

FLOORS = {
    "drdaemon.kernels": 0,
    "drdaemon": 1,
    "drdaemon.defaults": 1,
    "drdaemon.errors": 1,
    "drdaemon.exits": 1,
    "drdaemon.physics": 1,
    "drdaemon.model": 2,
    "drdaemon.io": 3,
    "drdaemon.config": 4,
    "drdaemon.logs": 4,
    "drdaemon.pipeline": 4,
    "drdaemon.engines": 5,
    "drdaemon.folders": 5,
    "drdaemon.service": 6,
    "drdaemon.evaluate": 7,
    "drdaemon.bench": 7,
    "drdaemon.cli": 8,
    "drdaemon.__main__": 8,
    "drdaemon.synth": 8,
}
TRAINER_MAY_IMPORT = {
    "drdaemon.kernels",
    "drdaemon",
    "drdaemon.defaults",
    "drdaemon.errors",
    "drdaemon.exits",
    "drdaemon.physics",
    "drdaemon.model",
    "drdaemon.io",
    "drdaemon.config",
}
#: What the trainer's command lines (its top-level modules) may import besides.
TRAINER_COMMANDS_MAY_IMPORT = TRAINER_MAY_IMPORT | {"drdaemon.evaluate"}
ROOMS_MAY_IMPORT = {
    "trainer.shared": {"trainer.shared"},
    "trainer.clip": {"trainer.shared", "trainer.clip"},
    # the CycleGAN's feature priors use the CLIP room's frozen visual tower and feature losses
    "trainer.cyclegan": {"trainer.shared", "trainer.clip", "trainer.cyclegan"},
    "trainer.radiograph": {"trainer.shared", "trainer.clip", "trainer.radiograph"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    return skipped


def project_imports(path: Path) -> set[str]:
    """Every drdaemon/trainer module ``path`` imports at run time (function-level imports included)."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {name for name in found if name.split(".")[0] in ("drdaemon", "trainer")}


def unit_of(module: str) -> str | None:
    """The floor's key a module belongs to (the longest prefix in FLOORS), or None."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        key = ".".join(parts[:end])
        if key in FLOORS:
            return key
    return None


def room_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and ".".join(parts[:2]) in ROOMS_MAY_IMPORT else "trainer"


def modules(package: str) -> dict[str, set[str]]:
    return {module_name(p): project_imports(p) for p in sorted((REPO / package).rglob("*.py"))}


def known(module: str, every: set[str]) -> bool:
    return module in every


def test_every_drdaemon_module_has_a_floor() -> None:
    assert [m for m in modules("drdaemon") if unit_of(m) is None] == []


def test_no_drdaemon_module_imports_a_floor_above_its_own() -> None:
    every = set(modules("drdaemon"))
    upward = []
    for module, imports in modules("drdaemon").items():
        floor = FLOORS[unit_of(module) or ""]
        for imported in imports:
            if not imported.startswith("drdaemon") or not (known(imported, every) or imported == "drdaemon"):
                continue  # a name imported from a module, not a module
            target = unit_of(imported)
            if target is not None and FLOORS[target] > floor:
                upward.append(f"{module} (floor {floor}) imports {imported} (floor {FLOORS[target]})")
    assert upward == []


def test_no_import_cycle_between_packages() -> None:
    every = set(modules("drdaemon")) | set(modules("trainer"))
    graph: dict[str, set[str]] = {}
    for module, imports in {**modules("drdaemon"), **modules("trainer")}.items():
        source = unit_of(module) if module.startswith("drdaemon") else room_of(module)
        for imported in imports:
            if imported not in every:
                continue
            target = unit_of(imported) if imported.startswith("drdaemon") else room_of(imported)
            if source and target and source != target:
                graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    cycles = sorted(f"{a} <-> {b}" for a, targets in graph.items() for b in targets if reaches(b, a))
    assert cycles == []


def test_the_trainer_uses_no_engine_service_or_command_line() -> None:
    every = set(modules("drdaemon"))
    wrong = []
    for module, imports in modules("trainer").items():
        allowed = TRAINER_COMMANDS_MAY_IMPORT if room_of(module) == "trainer" else TRAINER_MAY_IMPORT
        for imported in imports:
            if not imported.startswith("drdaemon") or imported not in every:
                continue
            command_line = imported.endswith((".cli", ".__main__"))
            if unit_of(imported) not in allowed or command_line:
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_the_trainer_rooms_import_only_what_they_may() -> None:
    every = set(modules("trainer"))
    wrong = []
    for module, imports in modules("trainer").items():
        room = room_of(module)
        if room == "trainer":
            continue  # the command lines at the top may use any room
        for imported in imports:
            if imported in every and imported != "trainer" and room_of(imported) not in ROOMS_MAY_IMPORT[room]:
                wrong.append(f"{module} ({room}) imports {imported}")
    assert wrong == []


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a kernel importing an engine is seen as one."""
    source = tmp_path / "k.py"
    source.write_text("def f():\n    from drdaemon.engines.registry import ENGINES\n    return ENGINES\n")
    assert "drdaemon.engines.registry" in project_imports(source)
    assert FLOORS[unit_of("drdaemon.engines.registry") or ""] > FLOORS[unit_of("drdaemon.kernels.tone") or ""]
