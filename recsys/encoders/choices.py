"""Constructor-time checks of typed options and sizes, for Python callers and for what the parser's types allow.

A config value outside a ``Literal`` annotation, or a ``class_path`` outside a strategy's base class, is refused by
jsonargparse at parse time; an encoder built in Python gets the same refusal from :func:`check_choice` (values read
from the very same annotation) or :func:`check_strategy` (which also names the strategies to use where a string
was passed, as before these options were typed).
"""

from __future__ import annotations

import typing

from recsys.errors import UsageError

__all__ = ["check_choice", "check_size", "check_strategy"]


def check_choice(name: str, value: object, choices: object) -> None:
    """Raise a one-line ``ValueError`` when ``value`` is not one of the ``Literal`` type ``choices``' values.

    Args:
        name: the option's name, as the constructor spells it.
        value: the value given.
        choices: a ``typing.Literal[...]`` type.
    """
    allowed = typing.get_args(choices)
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


def check_size(owner: str, name: str, value: object, minimum: int = 1, optional: bool = False) -> None:
    """Raise a one-line :class:`~recsys.errors.UsageError` when a size option is not an integer >= ``minimum``.

    A dimension of 0 would train an empty table to a "finished" run; a negative one fails deep inside torch.

    Args:
        owner: the class whose constructor takes the option (named in the message).
        name: the option's name, as the constructor spells it.
        value: the value given.
        minimum: the smallest accepted value.
        optional: whether None (the option's "off" or "automatic" value) is accepted.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{owner} {name} must be an integer >= {minimum}, got {value!r}")


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
