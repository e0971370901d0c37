"""docs/fault-matrix.md: 30 rows, each with a status, and every test it names exists."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MATRIX = REPO / "docs" / "fault-matrix.md"
STATUSES = {"proven", "partial", "missing", "elsewhere"}
ROW = re.compile(r"^\|\s*(\d+)\s*\|(.*)\|\s*$")
NODE_ID = re.compile(r"`(tests/[\w/]+\.py(?:::[\w]+)+)(?:\[[^\]`]*\])?`")


def matrix_rows(text: str) -> dict[int, list[str]]:
    rows: dict[int, list[str]] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if not match:
            continue
        number = int(match[1])
        if number in rows:
            raise AssertionError(f"row {number} appears twice")
        rows[number] = [cell.strip() for cell in match[2].split("|")]
    return rows


@cache
def definitions(path: Path) -> frozenset[str]:
    """The test functions and classes a file defines, as Class::name and name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return frozenset(names)


def missing_tests(cell: str) -> list[str]:
    missing = []
    for node_id in NODE_ID.findall(cell):
        file, _, name = node_id.partition("::")
        path = REPO / file
        if not path.is_file() or name not in definitions(path):
            missing.append(node_id)
    return missing


def test_the_matrix_has_thirty_rows_each_with_a_known_status():
    rows = matrix_rows(MATRIX.read_text(encoding="utf-8"))
    assert sorted(rows) == list(range(1, 31))
    for number, cells in rows.items():
        status = cells[2].strip("* ").lower()
        assert status in STATUSES, f"row {number}: status {cells[2]!r} is not one of {sorted(STATUSES)}"


def test_every_proven_or_partial_row_names_tests_and_every_named_test_exists():
    rows = matrix_rows(MATRIX.read_text(encoding="utf-8"))
    for number, cells in rows.items():
        status, proof = cells[2].strip("* ").lower(), cells[3]
        if status in {"proven", "partial"}:
            assert NODE_ID.search(proof), f"row {number} is {status} but names no test"
        assert not missing_tests(proof), f"row {number} names tests that do not exist: {missing_tests(proof)}"


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("`tests/unit/test_fault_matrix.py::test_the_matrix_has_thirty_rows_each_with_a_known_status`", []),
        (
            "`tests/unit/test_fault_matrix.py::test_no_such_test`",
            ["tests/unit/test_fault_matrix.py::test_no_such_test"],
        ),
        ("`tests/unit/test_no_such_file.py::test_x`", ["tests/unit/test_no_such_file.py::test_x"]),
        ("`tests/unit/test_fault_matrix.py::test_a_renamed_or_removed_test_is_caught[x-y]`", []),
    ],
)
def test_a_renamed_or_removed_test_is_caught(cell, expected):
    assert missing_tests(cell) == expected


def test_a_duplicated_row_is_refused():
    with pytest.raises(AssertionError, match="row 3 appears twice"):
        matrix_rows("| 3 | a | b | proven | x |\n| 3 | a | b | proven | x |\n")
