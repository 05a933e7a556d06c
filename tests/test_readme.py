"""The README's test command is what CI runs; the README opens with exactly two set-up commands."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^    (python3 -m venv .*)$", readme.split("## Upscaling")[0], re.M)
    assert len(commands) == 2
    assert "linearsr upscale examples/" in commands[0]
    test_part = commands[1].split("&& ", 2)[2]  # after creating and activating the venv
    assert test_part in (ROOT / ".ci" / "run").read_text()
    assert (ROOT / commands[0].split("linearsr upscale ")[1].split()[0]).is_file()


def test_the_architecture_table_matches_the_tree():
    """Every module under src/linearsr (but package __init__ files and the command modules, listed as
    `cli/`) is named in the README's architecture table, and every path the table names exists."""
    table = (ROOT / "README.md").read_text().split("## Architecture")[1].split("\n## ")[0]
    named = set(re.findall(r"`([\w/]+\.py)`", table))
    pkg = ROOT / "src" / "linearsr"
    modules = {str(f.relative_to(pkg)) for f in pkg.rglob("*.py")
               if f.name != "__init__.py" and f.relative_to(pkg).parts[0] != "cli"}
    assert modules - named == set()
    assert named - modules == set()
