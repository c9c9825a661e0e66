"""Every ``python -m pipelines.<name>`` the repository runs or documents starts something.

A module without a ``__main__`` block exits 0 having done nothing, so a command pointed at one
(as the layout move once did to the demo and the launcher tests) fails silently.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
#: ``-m <module>`` in shell and Markdown, ``"-m", "<module>"`` in Python argument lists.
_COMMAND = re.compile(r"""-m["',\s]+(pipelines(?:\.[a-z_]+)+)""")


def _commands() -> set[str]:
    files = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.sh", "*.yaml", "*Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {m for f in files for m in _COMMAND.findall((REPO / f).read_text(encoding="utf-8"))}


def _runs_something(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return False
    if spec.submodule_search_locations is not None:  # a package: python -m runs __main__
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return 'if __name__ == "__main__":' in Path(spec.origin).read_text(encoding="utf-8")


def test_every_python_dash_m_command_names_an_entry_point():
    commands = _commands()
    assert {"pipelines.score_events", "pipelines.demo", "pipelines.template_launcher"} <= commands
    assert [m for m in sorted(commands) if not _runs_something(m)] == []
