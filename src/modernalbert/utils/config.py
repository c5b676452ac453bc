"""Typed, strict configuration dataclasses for everything that is not the model config (whose class is
transformers' ``PreTrainedConfig``): fine-tuning, distillation, recipes and their sections, retrieval, ablations.

:func:`typed_config` turns a ``@dataclass`` into one checked by huggingface_hub's ``@strict`` (the decorator
transformers' own configs use): every field is checked against its annotation when set (at construction and on
assignment), then every ``validate_*`` method of the class runs. Failures are raised as :class:`ValueError` naming
the field and value (``train.steps=0 is invalid: ...``), so that the command line reports them in one line; an
``int`` is accepted where a ``float`` is annotated (YAML writes ``1`` for ``1.0``). :func:`from_mapping` builds one
from a YAML or command-line mapping and refuses unknown keys by name; :func:`load_yaml` reads a YAML file with
dotted ``key=value`` overrides.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _accepts_float(annotation: Any) -> bool:
    return annotation is float or float in typing.get_args(annotation)


def typed_config(cls: type[T] | None = None, *, prefix: str | None = None) -> Any:
    """Make a dataclass a typed, strict config (see the module docstring).

    Args:
        cls: The dataclass (decorator use without arguments).
        prefix: How errors name the config (``"train"`` gives ``train.steps=0 is invalid``); default: the class name.

    Returns:
        The class, validated on construction and assignment.
    """

    def wrap(klass: type[T]) -> type[T]:
        from huggingface_hub.dataclasses import strict
        from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError

        hints = typing.get_type_hints(klass)  # real types even under `from __future__ import annotations`
        for f in fields(klass):
            f.type = hints[f.name]
        floats = {f.name for f in fields(klass) if _accepts_float(f.type)}
        name = prefix or klass.__name__
        klass = strict(klass)
        strict_setattr, strict_init = klass.__setattr__, klass.__init__

        def checked_setattr(self: Any, key: str, value: Any) -> None:
            if key in floats and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            try:
                strict_setattr(self, key, value)
            except StrictDataclassFieldValidationError as err:
                raise ValueError(f"{name}.{key}={value!r} is invalid: {err.__cause__}") from None

        @functools.wraps(strict_init)
        def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                strict_init(self, *args, **kwargs)
            except StrictDataclassClassValidationError as err:  # a validate_* method's own ValueError
                raise err.__cause__ from None

        klass.__setattr__ = checked_setattr  # type: ignore[method-assign]
        klass.__init__ = checked_init  # type: ignore[method-assign]
        return klass

    return wrap(cls) if cls is not None else wrap


def field_kind(cls: type, name: str) -> tuple[type, tuple[Any, ...] | None]:
    """How a field's values are written as text: its scalar type (``int | None`` gives ``int``, a ``Literal`` the
    type of its values) and its allowed values (a ``Literal``'s; None otherwise).

    Raises:
        TypeError: A field of a container type (no single scalar form).
    """
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return type(args[0]), tuple(args)
    if hint in (int, float, str, bool):
        return hint, None
    if len(args) == 1 and args[0] in (int, float, str, bool):
        return args[0], None
    if len(args) == 1 and typing.get_origin(args[0]) is typing.Literal:
        values = typing.get_args(args[0])
        return type(values[0]), tuple(values)
    if float in args and int in args:
        return float, None
    raise TypeError(f"{cls.__name__}.{name} ({hint}) has no single scalar form.")


def check_keys(values: dict[str, Any] | Any, allowed: Any, unknown: str) -> None:
    """Refuse the keys of ``values`` that are not in ``allowed`` (a typo must never fall back to a default).

    Args:
        values: A mapping read from YAML or the command line.
        allowed: The accepted keys.
        unknown: The message, with ``{keys}`` for the unknown ones (the allowed keys are appended).

    Raises:
        ValueError: Unknown keys, named.
    """
    extra = sorted(set(values) - set(allowed))
    if extra:
        raise ValueError(unknown.format(keys=extra) + f": allowed are {sorted(allowed)}.")


def from_mapping(cls: type[T], values: dict[str, Any] | None, *, unknown: str, prefix: str) -> T:
    """Build the config ``cls`` from a mapping read from YAML or the command line.

    Unknown keys are an error (``unknown`` is the message, with ``{keys}`` for them; the allowed keys are appended),
    and strings are accepted for float fields because YAML 1.1 reads ``5e-4`` (no dot) as a string.

    Args:
        cls: The config class.
        values: The mapping (None for all defaults).
        unknown: Message for unknown keys, e.g. ``"Unknown key(s) {keys} in recipe section 'train'"``.
        prefix: Field prefix for value errors, e.g. ``"train"``.

    Raises:
        ValueError: Unknown keys, or a value the config refuses.
    """
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"{prefix} must be a mapping of its fields, got {type(values).__name__}.")
    values = dict(values or {})
    check_keys(values, [f.name for f in fields(cls)], unknown)
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if isinstance(value, list) and typing.get_origin(hints[name]) is tuple:  # YAML has lists, not tuples
            values[name] = tuple(value)
        elif isinstance(value, str) and _accepts_float(hints[name]):
            try:
                values[name] = float(value)
            except ValueError:
                raise ValueError(f"{prefix}.{name}={value!r} is invalid: expected a number.") from None
    return cls(**values)


def load_yaml(path: str | Path, overrides: list[str] | None, *, kind: str, form: str = "key=value",
              example: str) -> dict[str, Any]:
    """Read a YAML mapping and apply dotted ``key=value`` overrides (values parsed as YAML; sections created).

    Args:
        path: The YAML file.
        overrides: ``a.b.c=value`` strings, applied in order.
        kind: What the file is, for error messages ("Recipe", "Ablation recipe").
        form: How an override looks, for the error on a malformed one.
        example: An override shown in that error.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Malformed YAML (line and column named) or text that is not UTF-8, an override without ``=``,
            or one that descends into a non-section.
    """
    import yaml

    from .io import read_text

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} {path} does not exist.")
    try:
        values = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as err:  # its own message spans lines: one line with the place and the problem
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
        raise ValueError(f"{kind} {path} is not valid YAML{where}: {problem}; fix the file.") from err
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"Override {item!r} must look like {form} (e.g. {example}).")
        key, raw = item.split("=", 1)
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"Override {item!r}: {part} is not a section.")
        node[parts[-1]] = yaml.safe_load(raw)
    return values


__all__ = ["check_keys", "field_kind", "from_mapping", "load_yaml", "typed_config"]
