"""The command line as a module: ``python -m modernalbert``."""

import subprocess
import sys


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "modernalbert", "merge", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "usage: modernalbert merge" in done.stdout
