"""Every module's and plugin's embedded documentation is YAML that ansible-doc can read, under its own name."""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCUMENTED = sorted(
    [*REPO.glob("plugins/modules/*.py"), *REPO.glob("plugins/callback/*.py")],
    key=lambda path: path.name,
)


def blocks(path: Path) -> dict[str, str]:
    return {
        node.targets[0].id: node.value.value
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN")
    }


@pytest.mark.parametrize("path", DOCUMENTED, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_the_documentation_parses_and_names_the_file(path):
    found = blocks(path)
    assert "DOCUMENTATION" in found
    parsed = {name: yaml.safe_load(text) for name, text in found.items()}  # raises on invalid YAML
    documentation = parsed["DOCUMENTATION"]
    assert documentation.get("module", documentation.get("name")) == path.stem
    assert documentation["short_description"]
