"""The repository stands alone: it cites no developer material outside itself, and its docs exist.

Facts the toolkit relies on are written down, with their public sources, in docs/. Nothing may
point at the developers' reference directory, at a path above the repository, or at a docs/
page that does not exist. The forbidden strings are built from pieces so that this file does
not match itself.
"""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

# The developers' reference directory, and the same directory reached from the repository.
REFERENCE_DIR = "shared" + "/" + "reference"
PARENT_SHARED = ".." + "/" + "shared"
# The documents of that directory, cited by name alone ("<name>.md §3").
REFERENCE_DOCS = re.compile(
    r"(?<![\w/.-])(?:" + "|".join(["facts", "reliability", "cpu-engines", "lab-hosts", "landscape"]) + r")\.md\b"
)
# A docs page named from the repository root; upstream paths inside URLs are preceded by "/".
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*\.md\b")
# Relative targets of Markdown links: [text](target) or [text](target#anchor).
MARKDOWN_LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s#]+)(?:#[^)\s]*)?\)")


class TextFiles(dict):
    """Repository path -> text; shown short in failure reports."""

    def __repr__(self) -> str:
        return f"<{len(self)} tracked text files>"


def tracked_text_files() -> TextFiles:
    """Every tracked file that exists in the working tree and is text, by repository path."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout: {exc}")
    files = TextFiles()
    for name in sorted(filter(None, listing.decode().split("\0"))):
        path = REPO / name
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return files


@pytest.fixture(scope="module")
def files() -> TextFiles:
    return tracked_text_files()


def machine_paths() -> list[str]:
    """Absolute paths that only exist on a developer's machine: the checkout itself, and the shared
    directory beside it."""
    return [str(REPO) + "/", str(REPO.parent / "shared")]


def find(files: dict[str, str], predicate) -> list[str]:
    found = []
    for name, text in files.items():
        for number, line in enumerate(text.splitlines(), 1):
            hit = predicate(line)
            if hit:
                found.append(f"{name}:{number}: {hit}")
    return found


def test_nothing_cites_the_reference_directory(files):
    cited = find(files, lambda line: REFERENCE_DIR if REFERENCE_DIR in line else None)
    assert not cited, "cite docs/ (with the public source) instead of:\n" + "\n".join(cited)


def test_nothing_cites_the_reference_documents_by_name(files):
    cited = find(files, lambda line: (match := REFERENCE_DOCS.search(line)) and match.group(0))
    assert not cited, "cite docs/ (with the public source) instead of:\n" + "\n".join(cited)


def test_nothing_points_outside_the_repository(files):
    forbidden = [PARENT_SHARED, *machine_paths()]
    cited = find(files, lambda line: next((text for text in forbidden if text in line), None))
    assert not cited, "paths outside the repository:\n" + "\n".join(cited)


def test_every_docs_page_mentioned_exists(files):
    missing = find(
        files, lambda line: ", ".join(path for path in DOCS_PATH.findall(line) if not (REPO / path).is_file())
    )
    assert not missing, "docs pages that do not exist:\n" + "\n".join(missing)


def test_links_between_markdown_files_stay_inside_and_exist(files):
    problems = []
    for name, text in files.items():
        if not name.endswith(".md"):
            continue
        base = (REPO / name).parent
        for target in MARKDOWN_LINK.findall(text):
            resolved = (base / target).resolve()
            if not resolved.is_relative_to(REPO):
                problems.append(f"{name}: {target} is outside the repository")
            elif name.startswith("docs/") and not resolved.exists():
                problems.append(f"{name}: {target} does not exist")
    assert not problems, "\n".join(problems)


def test_the_docs_pages_exist_and_the_index_lists_them():
    pages = sorted(path.name for path in DOCS.glob("*.md") if path.name != "README.md")
    assert {"gpu-and-drivers.md", "models-and-sizing.md", "security.md", "test-engines.md"} <= set(pages)
    index = (DOCS / "README.md").read_text()
    assert all(f"]({page})" in index for page in pages), "docs/README.md does not link every page"
