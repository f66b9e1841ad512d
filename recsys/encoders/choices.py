"""Constructor-time checks of typed options, for Python callers that bypass the config parser.

A config value outside a ``Literal`` annotation, or a ``class_path`` outside a strategy's base class, is refused by
jsonargparse at parse time; an encoder built in Python gets the same refusal from :func:`check_choice` (values read
from the very same annotation) or :func:`check_strategy` (which also names the strategies to use where a string
was passed, as before these options were typed).
"""

from __future__ import annotations

import typing

__all__ = ["check_choice", "check_strategy"]


def check_choice(name: str, value: object, choices: object) -> None:
    """Raise a one-line ``ValueError`` when ``value`` is not one of the ``Literal`` type ``choices``' values.

    Args:
        name: the option's name, as the constructor spells it.
        value: the value given.
        choices: a ``typing.Literal[...]`` type.
    """
    allowed = typing.get_args(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


def check_strategy(name: str, value: object, base: type) -> None:
    """Raise a one-line ``TypeError`` when ``value`` is not an instance of the strategy base class ``base``.

    Args:
        name: the option's name, as the constructor spells it.
        value: the value given.
        base: the strategy base class; the message lists its direct subclasses.
    """
    if not isinstance(value, base):
        known = ", ".join(f"{c.__name__}()" for c in base.__subclasses__())
        raise TypeError(f"{name} must be an instance of {base.__name__} ({known}), not {value!r}")
