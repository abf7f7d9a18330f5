"""docs/cli.md is the ``--help`` text of every verb, regenerated here from the parsers.

    RNNKIT_UPDATE_DOCS=1 python -m pytest tests/test_docs.py    # rewrite docs/cli.md after changing flags

Task options depend on the task (``rnnkit.cli.main.peek_task``), so ``train`` is documented once per
task, and the verbs that read the task from a run directory (``evaluate``, ``sample``, ``predict``)
once without a directory and once per task that adds options of its own. Help is wrapped at
``COLUMNS=100`` so that the text does not depend on the terminal. argparse's layout changes between
Python minor versions, so the comparison runs only on the version that wrote the file.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
TASKS = ("textgen", "forecast", "textclass", "seqclass", "tag")  # the five jobs (tests may register toy tasks)
COLUMNS = "100"
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _subparser(parser, verb):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[verb]


def _verbs(parser) -> list[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def _adds_options(task, verb: str) -> bool:
    probe = argparse.ArgumentParser(add_help=False)
    task.add_arguments(verb, probe)
    return bool(probe._actions)


def _block(title: str, text: str) -> str:
    return f"## {title}\n\n```text\n{text.rstrip()}\n```\n"


def cli_reference() -> str:
    """The text of docs/cli.md, from ``build_parser`` (with and without a task)."""
    from rnnkit.cli.main import build_parser
    from rnnkit.tasks import get_task

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = COLUMNS
    try:
        plain = build_parser(None)
        by_task = {name: build_parser(get_task(name)) for name in TASKS}
        parts = [
            "# rnnkit command line\n",
            "The `--help` text of every verb, generated from the parsers by `tests/test_docs.py` "
            f"(Python {PYTHON}, `COLUMNS={COLUMNS}`); that test fails when this file is out of date. "
            "After changing a flag, regenerate it:\n",
            "```bash\nRNNKIT_UPDATE_DOCS=1 python -m pytest tests/test_docs.py\n```\n",
            "`train` takes the task as its positional (or the config file's `task`) and adds that task's "
            "data options; `evaluate`, `sample` and `predict` read the task from the run directory and "
            "add its options, so they are shown once without a directory and once per task that has "
            "options of its own.\n",
            _block("`rnnkit --help`", plain.format_help()),
        ]
        for verb in _verbs(plain):
            if verb == "train":
                for name in TASKS:
                    parts.append(_block(f"`rnnkit train {name} --help`", _subparser(by_task[name], verb).format_help()))
                continue
            parts.append(_block(f"`rnnkit {verb} --help`", _subparser(plain, verb).format_help()))
            for name in TASKS:
                if _adds_options(get_task(name), verb):
                    parts.append(_block(f"`rnnkit {verb} DIR --help` (DIR of a {name} run)",
                                        _subparser(by_task[name], verb).format_help()))
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def test_cli_reference_is_up_to_date():
    text = cli_reference()
    if os.environ.get("RNNKIT_UPDATE_DOCS") == "1":
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text, encoding="utf-8")
        return
    assert DOC.exists(), f"{DOC} is missing; write it with RNNKIT_UPDATE_DOCS=1 python -m pytest tests/test_docs.py"
    current = DOC.read_text(encoding="utf-8")
    written_with = re.search(r"\(Python (\d+\.\d+),", current)
    if written_with and written_with.group(1) != PYTHON:
        pytest.skip(f"docs/cli.md was generated with Python {written_with.group(1)}; argparse lays help out "
                    f"differently on {PYTHON}")
    assert current == text, ("docs/cli.md is out of date with the parsers; regenerate it with "
                             "RNNKIT_UPDATE_DOCS=1 python -m pytest tests/test_docs.py")
