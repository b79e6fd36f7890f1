"""Every tracked source file is documented: in the README's Layout table or in docs/design.md.

Which files: `git ls-files` of *.py, *.cpp, *.h, *.cuh, *.cu, CMakeLists.txt and Makefile
(at the root or in any folder), plus every file under .ci/ and cmake/.

Which entries: the backticked spans (`...`) of the README's "## Layout" section (up to the
next "## " heading) and of docs/design.md. A span `{a,b}` inside an entry stands for each
alternative (`csrc/ddf_checks.{h,cpp}` is two entries).

The rule: a file is covered when
  - some entry, in either document, is exactly its path (relative to the repository root), or
  - an entry of the README's Layout section that ends in "/" is a folder above it
    (`tests/` covers tests/test_docs.py and tests/cpp/test_ddf.cpp).
Folders named in docs/design.md do not cover files: the Layout table is the index, and the
design names folders in passing.

Needs a git checkout (CI clones one); without git or a .git, the test skips, visibly.
"""

import itertools
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_SUFFIXES = (".py", ".cpp", ".h", ".cuh", ".cu")
SOURCE_NAMES = ("CMakeLists.txt", "Makefile")
ALL_FILES_UNDER = (".ci/", "cmake/")


def tracked_source_files() -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot list the tracked files")
    result = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"not a git checkout ({result.stderr.strip()}): cannot list the tracked files")
    files = []
    for path in result.stdout.splitlines():
        name = path.rsplit("/", 1)[-1]
        if path.endswith(SOURCE_SUFFIXES) or name in SOURCE_NAMES or path.startswith(ALL_FILES_UNDER):
            files.append(path)
    return files


def expand_braces(entry: str) -> list[str]:
    """`a.{h,cpp}` -> [`a.h`, `a.cpp`]; several brace groups give their product."""
    parts = re.split(r"\{([^{}]*)\}", entry)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def entries(text: str) -> set[str]:
    found = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        for entry in expand_braces(span.strip()):
            found.add(entry.removeprefix("./"))
    return found


def layout_section(readme: str) -> str:
    match = re.search(r"^## Layout\s*$(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def read(relative: str) -> str:
    with open(os.path.join(ROOT, relative), encoding="utf-8") as f:
        return f.read()


def uncovered(files, layout_entries, design_entries):
    paths = layout_entries | design_entries
    folders = [e for e in layout_entries if e.endswith("/")]
    return [f for f in files if f not in paths and not any(f.startswith(folder) for folder in folders)]


def test_rule_on_a_small_example():
    layout = entries("| `tests/` | x |\n| `csrc/ddf_checks.{h,cpp}` | y |")
    design = entries("the `csrc/cpu/` wing and `meta/ddf_meta.cpp`")
    files = ["tests/cpp/test_ddf.cpp", "csrc/ddf_checks.h", "csrc/ddf_checks.cpp", "meta/ddf_meta.cpp",
             "csrc/cpu/ddf_cpu.cpp", "setup.py"]
    # A folder named only in the design covers nothing; an unlisted file is reported.
    assert uncovered(files, layout, design) == ["csrc/cpu/ddf_cpu.cpp", "setup.py"]


def test_every_tracked_source_file_is_documented():
    files = tracked_source_files()
    assert "setup.py" in files and any(f.startswith("csrc/") for f in files), files
    layout_entries = entries(layout_section(read("README.md")))
    design_entries = entries(read(os.path.join("docs", "design.md")))
    missing = uncovered(files, layout_entries, design_entries)
    assert not missing, (
        "source files in neither the README's Layout table nor docs/design.md (add the path, or "
        f"a folder row ending in '/' to the Layout table): {missing}"
    )


def test_the_repository_does_not_point_at_the_developers_brief():
    # The design lives in docs/design.md, not in a brief outside the repository.
    files = tracked_source_files() + ["README.md", os.path.join("docs", "design.md")]
    pointing = [f for f in files if f != "tests/test_docs.py" and re.search(r"shared/DESIGN\.md", read(f))]
    assert not pointing, pointing
