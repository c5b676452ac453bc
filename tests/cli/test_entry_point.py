"""The command line's entry point: `modernalbert --help` imports neither the package nor torch; one module per
command, imported only when the command is asked for."""

import subprocess
import sys
from pathlib import Path

import modernalbert_cli

ROOT = Path(__file__).resolve().parents[2]


def test_help_imports_no_command_no_package_no_torch():
    probe = ("import sys\nfrom modernalbert_cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'modernalbert') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "COMMAND" in out.stdout and "quickstart" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_has_its_module():
    import importlib

    for command in modernalbert_cli.COMMANDS:
        name = modernalbert_cli.command_module(command)
        assert (ROOT / "src" / (name.replace(".", "/") + ".py")).is_file(), name
        module = importlib.import_module(name)
        assert callable(module.add_arguments) and callable(module.run)
        modernalbert_cli.build_parser([command])  # the command's arguments are added without error
