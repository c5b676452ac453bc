"""Command-line flags derived from the typed configs: one flag per field, its help taken from the config class's
docstring (``Attributes:``), its type and choices from the field's annotation (``int | None`` parses as ``int``, a
``Literal`` gives choices, ``bool`` a switch). Fields keep their config defaults unless the command sets others.

A field's flag is ``--name-with-dashes``, or ``metadata={"flag": ...}`` on the field (e.g. ``--faiss`` for
``use_faiss``), or what the command passes in ``names``. Several configs can share a parser: each has a ``key`` that
prefixes its destinations (``args.<key>.<field>``).
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, fields
from typing import Any


def attribute_docs(cls: type) -> dict[str, str]:
    """``{field: description}`` from the ``Attributes:`` section of a Google-style class docstring."""
    doc = inspect.getdoc(cls) or ""
    docs: dict[str, str] = {}
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    current = None
    for line in section.splitlines():
        if not line.strip():
            continue
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif line.startswith("        ") and current:
            docs[current] += " " + line.strip()
        else:
            break
    return docs


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, key: str, skip: Iterable[str] = (),
                         names: Mapping[str, str] | None = None, defaults: Mapping[str, Any] | None = None) -> None:
    """Add a flag for every scalar field of ``cls`` (container fields and ``skip`` are left out).

    Args:
        parser: The (sub-)parser.
        cls: A typed config class (:func:`modernalbert.utils.config.typed_config`).
        key: Prefix of the destinations (``args.<key>.<field>``), so that several configs share a parser.
        skip: Fields without a flag.
        names: Field -> flag name (without ``--``) for this command.
        defaults: Field -> default for this command (otherwise the config's own).
    """
    from ..utils.config import field_kind

    docs, names, defaults = attribute_docs(cls), dict(names or {}), dict(defaults or {})
    for f in fields(cls):
        if f.name in skip:
            continue
        try:
            kind, choices = field_kind(cls, f.name)
        except TypeError:
            continue  # a container (e.g. a tuple of cut-offs): Python API only
        flag = "--" + (names.get(f.name) or f.metadata.get("flag") or f.name.replace("_", "-"))
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        kwargs: dict[str, Any] = {"dest": f"{key}.{f.name}", "default": defaults.get(f.name),
                                  "help": f"{docs.get(f.name, f.name)} (default: {default})"}
        if kind is bool:
            kwargs["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        else:
            kwargs.update(type=kind, choices=choices, metavar=None if choices else f.name.upper())
        parser.add_argument(flag, **kwargs)


def config_from_args(cls: type, args: argparse.Namespace, *, key: str, **fixed: Any) -> Any:
    """The config ``cls`` from the flags :func:`add_config_arguments` added (unset flags keep the defaults), with
    ``fixed`` fields set by the command itself.

    Raises:
        ValueError: A value the config refuses (the message names the field).
    """
    from ..utils.config import from_mapping

    values = {f.name: getattr(args, f"{key}.{f.name}") for f in fields(cls)
              if getattr(args, f"{key}.{f.name}", None) is not None}
    values.update(fixed)
    return from_mapping(cls, values, unknown=f"Unknown {cls.__name__} field(s) {{keys}}", prefix=cls.__name__)


__all__ = ["add_config_arguments", "attribute_docs", "config_from_args"]
