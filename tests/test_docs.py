"""Every entry script has its page docs/<script>.md, linked from README.md, and the page names
every flag the script's --help prints. Entry scripts are found, not listed: any top-level *.py
that defines `main`, so a script added later is covered without touching this test."""
import ast
import re

import pytest

from conftest import REPO, run_script

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def entry_scripts():
    out = []
    for path in sorted(REPO.glob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            out.append(path.stem)
    return out


SCRIPTS = entry_scripts()


def test_entry_scripts_are_found():
    # the scripts of the assignment are among them (the discovery itself works)
    assert {"train_dense", "prune_magnitude", "lottery_imp", "early_bird", "robustness", "plot_results",
            "make_report", "run_all"} <= set(SCRIPTS)
    assert "data" not in SCRIPTS and "conftest" not in SCRIPTS


def test_readme_is_a_short_front_door_linking_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    links = set(re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]*)?\)", readme))
    pages = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}
    assert pages <= links, f"docs pages not linked from README.md: {sorted(pages - links)}"
    assert "bench/README.md" in readme


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_help_flag_is_in_the_scripts_page(script):
    page = REPO / "docs" / f"{script}.md"
    assert page.is_file(), f"{script}.py has no docs/{script}.md"
    assert f"(docs/{script}.md)" in (REPO / "README.md").read_text(), f"README.md does not link docs/{script}.md"
    help_text = run_script(f"{script}.py", "--help").stdout
    flags = set(FLAG.findall(help_text)) - {"--help"}
    assert len(flags) >= 2, help_text  # the help text was read
    documented = set(FLAG.findall(page.read_text()))
    assert flags <= documented, f"docs/{script}.md lacks {sorted(flags - documented)}"
