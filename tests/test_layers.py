"""The layers import only downwards: service/ and worker/ are two thin adapters over p2sam/ and
never import each other; service/ leaves DICOM parsing to imaging/; models/ and imaging/ know
neither the application nor HTTP nor Celery."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "service": {"worker", "pydicom", "highdicom"},
    "worker": {"service"},
    "p2sam": {"service", "worker"},
    "imaging": {"p2sam", "service", "worker", "models", "fastapi", "celery"},
    "models": {"p2sam", "service", "worker", "imaging", "pydicom", "fastapi", "celery"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports (at module level or inside functions; relative imports skipped)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package):
    leaks = {str(p.relative_to(REPO)): sorted(imported_packages(p) & FORBIDDEN[package])
             for p in sorted((REPO / package).rglob("*.py"))}
    assert not {k: v for k, v in leaks.items() if v}, f"{package}/ imports what it must not"


def test_the_checker_sees_a_leak(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from worker.runner import execute_job\n    import pydicom.uid\n")
    assert imported_packages(bad) == {"worker", "pydicom"}
