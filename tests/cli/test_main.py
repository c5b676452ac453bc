"""The command line as a module: ``python -m modernalbert``."""

import runpy
import sys

import pytest


def test_python_dash_m_runs_the_command_line(monkeypatch, capsys):
    """What ``python -m modernalbert merge --help`` runs (runpy is how ``-m`` runs a package's ``__main__``)."""
    monkeypatch.setattr(sys, "argv", ["modernalbert", "merge", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("modernalbert", run_name="__main__", alter_sys=True)
    assert done.value.code == 0
    assert "usage: modernalbert merge" in capsys.readouterr().out
