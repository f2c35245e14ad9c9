"""Parameters checked where they enter curate: types and ranges, one line naming the parameter.

The Python API (curate/api.py) is the boundary: the commands pass their options through it,
so a script and the CLI get the same `InputError` for the same bad value (a string where a
number goes, NaN, a bool where a count goes, 0 where one is needed, a single label where a
list goes), never an AssertionError, a TypeError or a DuckDB conversion error from deep inside.

Each public function says what each of its parameters takes, with the few checkers here:

    @check.params(min_prob=check.number(0, 1), labels=check.names(), out=check.path(none=True))
    def filter(workspace, *, labels=(), min_prob=0.5, out=None): ...

A checker is `(name, value) -> value as used` (e.g. a single label string -> a 1-tuple) and
raises `InputError("--min-prob '0.5' (a str): give a number from 0 to 1")`. The values are
checked as given; defaults are the function's own. tests/cli/test_api_params.py calls every
public function with hostile values for every parameter, so one without a checker fails it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..errors import InputError
from .textout import safe

Checker = Callable[[str, Any], Any]
F = TypeVar("F", bound=Callable[..., Any])

INT64 = (-(2 ** 63), 2 ** 63 - 1)  # what DuckDB, numpy and FAISS take for an integer


def params(options: type | None = None, /, **checkers: Checker) -> Callable[[F], F]:
    """Check the named parameters of the decorated function on every call (only those given:
    defaults are not checked). A keyword-only parameter is named as its option (`--min-prob`),
    another as itself (`workspace`). A call that does not fit the signature is an InputError too.

    `options`: a dataclass whose fields the function's `**options` are (BuildOptions): each
    field needs a checker here, named as its option, and a keyword that is no field is refused
    as a call that does not fit."""

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)
        var_kw = next((n for n, p in sig.parameters.items() if p.kind is p.VAR_KEYWORD), None)
        fields = {f.name: f.type for f in dataclasses.fields(options)} if options is not None else {}
        if (var_kw is None) != (options is None):
            raise TypeError(f"{fn.__qualname__}: **{var_kw} and an options class go together")
        unknown = sorted(set(checkers) - set(sig.parameters) - set(fields))
        if unknown:
            raise TypeError(f"{fn.__qualname__}: no parameter {', '.join(unknown)} to check")
        unchecked = sorted(set(fields) - set(checkers))
        if unchecked:
            raise TypeError(f"{fn.__qualname__}: no checker for the option(s) {', '.join(unchecked)}")
        shown = {n: f"--{n.replace('_', '-')}" if p.kind is p.KEYWORD_ONLY else n for n, p in sig.parameters.items()}
        shown.update({n: f"--{n.replace('_', '-')}" for n in fields})

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as e:
                raise InputError(f"{fn.__name__}(): {e}") from None
            for name, value in bound.arguments.items():
                if name in checkers:
                    bound.arguments[name] = checkers[name](shown[name], value)
            if var_kw is not None:
                given = bound.arguments.get(var_kw, {})
                for name in given:
                    if name not in fields:
                        raise InputError(f"{fn.__name__}(): got an unexpected keyword argument '{name}'")
                    given[name] = checkers[name](shown[name], given[name])
            return fn(*bound.args, **bound.kwargs)

        checked.checked_params = frozenset(checkers)  # type: ignore[attr-defined]
        checked.option_fields = fields  # type: ignore[attr-defined]  # name -> annotation, for **options
        return checked  # type: ignore[return-value]

    return wrap


def choice(values: Iterable[str], *, none: bool = False) -> Checker:
    """One of the names given (a string)."""
    allowed = tuple(values)
    give = f"one of {', '.join(allowed)}" + (", or None" if none else "")

    def check(name: str, value: Any) -> str | None:
        if value is None and none:
            return None
        if not isinstance(value, str):
            raise _refuse(name, value, give)
        if value not in allowed:
            raise _refuse(name, value, give, typed=False)
        return value

    return check


def fields(obj: Any, **checkers: Checker) -> None:
    """Check the named fields of a frozen options object (from its __post_init__), each named as
    its option (`--min-prob`), and keep what each checker gives back (one label string: one label)."""
    for name, checker in checkers.items():
        object.__setattr__(obj, name, checker(f"--{name.replace('_', '-')}", getattr(obj, name)))


def options(kind: type, *, none: bool = False) -> Checker:
    """An options object of this class (built, and so checked, by its own constructor)."""
    give = f"a {kind.__name__}" + (", or None" if none else "")

    def check(name: str, value: Any) -> Any:
        if (value is None and none) or isinstance(value, kind):
            return value
        raise _refuse(name, value, give)

    return check


def _show(value: object) -> str:
    text = repr(value)
    return safe(text if len(text) <= 60 else text[:57] + "...")


def _kind(value: object) -> str:
    name = type(value).__name__
    return f"({'an' if name[:1] in 'aeiou' else 'a'} {name})"


def _refuse(name: str, value: object, give: str, typed: bool = True) -> InputError:
    return InputError(f"{name} {_show(value)}{' ' + _kind(value) if typed else ''}: give {give}")


def _range(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool, what: str) -> str:
    if lo is not None and hi is not None:
        if not lo_open and not hi_open:
            return f"{what} from {lo:g} to {hi:g}"
        return f"{what} {'above' if lo_open else 'from'} {lo:g} and {'below' if hi_open else 'at most'} {hi:g}"
    if lo is not None:
        return f"{what} {'above' if lo_open else 'of at least'} {lo:g}"
    if hi is not None:
        return f"{what} {'below' if hi_open else 'of at most'} {hi:g}"
    return what


def integer(lo: int | None = None, hi: int | None = None, *, none: bool = False) -> Checker:
    """A whole number (not a bool, not a float) in [lo, hi] and in int64's range."""
    low = INT64[0] if lo is None else max(lo, INT64[0])
    high = INT64[1] if hi is None else min(hi, INT64[1])
    give = _range(lo, hi, False, False, "a whole number") + ("" if not none else ", or None")

    def check(name: str, value: Any) -> int | None:
        if value is None and none:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _refuse(name, value, give)
        if not low <= int(value) <= high:
            raise _refuse(name, value, give if lo is not None or hi is not None else "a whole number that fits "
                          "in 64 bits", typed=False)
        return int(value)

    return check


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           none: bool = False) -> Checker:
    """A finite real number (an int or a float, not a bool or a string) in the range given."""
    give = _range(lo, hi, lo_open, hi_open, "a number") + ("" if not none else ", or None")

    def check(name: str, value: Any) -> float | None:
        if value is None and none:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _refuse(name, value, give)
        v = float(value)
        if not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) \
                or (hi is not None and (v >= hi if hi_open else v > hi)):
            raise _refuse(name, value, give, typed=False)
        return v

    return check


def probability(*, none: bool = False) -> Checker:
    """A number from 0 to 1."""
    return number(0, 1, none=none)


def flag(*, none: bool = False) -> Checker:
    """True or False (not 1, not "yes": a string is always true to Python)."""
    give = "True or False" + (", or None" if none else "")

    def check(name: str, value: Any) -> bool | None:
        if value is None and none:
            return None
        if isinstance(value, bool):
            return value
        if type(value).__module__ == "numpy":  # numpy's bool (what a DataFrame cell holds)
            import numpy as np

            if isinstance(value, np.bool_):
                return bool(value)
        raise _refuse(name, value, give)

    return check


def _clean_text(name: str, value: Any, give: str, empty: bool) -> str:
    if not isinstance(value, str):
        raise _refuse(name, value, give)
    if "\x00" in value or (not empty and not value.strip()):
        raise _refuse(name, value, give, typed=False)
    return value


def text(*, none: bool = False, empty: bool = False) -> Checker:
    """A string (non-blank unless `empty`; never one holding NUL)."""
    give = ("a string" if empty else "a non-empty string") + (", or None" if none else "")

    def check(name: str, value: Any) -> str | None:
        if value is None and none:
            return None
        return _clean_text(name, value, give, empty)

    return check


def path(*, none: bool = False) -> Checker:
    """A path: a non-empty string or an os.PathLike (a pathlib.Path), as given."""
    give = "a path (a str or pathlib.Path)" + (", or None" if none else "")

    def check(name: str, value: Any) -> Any:
        if value is None and none:
            return None
        if isinstance(value, os.PathLike):
            p = os.fspath(value)
            if isinstance(p, str) and p and "\x00" not in p:
                return value
            raise _refuse(name, value, give)
        return _clean_text(name, value, give, empty=False)

    return check


def names(*, none: bool = False) -> Checker:
    """One name or several: a string is ONE name (labels="pantry" is ("pantry",), never its
    letters); else any iterable of non-empty strings. Returns a tuple."""
    give = "a string or a list of strings" + (", or None" if none else "")

    def check(name: str, value: Any) -> tuple[str, ...] | None:
        if value is None and none:
            return None
        if isinstance(value, str):
            return (_clean_text(name, value, give, empty=False),)
        if isinstance(value, (bytes, bytearray, dict)) or not isinstance(value, Iterable):
            raise _refuse(name, value, give)
        out = tuple(value)
        for v in out:
            _clean_text(name, v, give, empty=False)
        return out

    return check


def conditions() -> Checker:
    """`where`: "COLUMN=VALUE" strings or (column, value) pairs (a value a string or a number);
    a single string is one condition. Returns a tuple of strings and (str, str) pairs."""
    give = 'a "COLUMN=VALUE" string, or a list of them or of (column, value) pairs'

    def one(name: str, w: Any) -> str | tuple[str, str]:
        if isinstance(w, str):
            return _clean_text(name, w, give, empty=False)
        if isinstance(w, (tuple, list)) and len(w) == 2 and isinstance(w[0], str) and w[0].strip() \
                and (isinstance(w[1], str) or (isinstance(w[1], numbers.Real) and not isinstance(w[1], bool))):
            return (w[0], str(w[1]))
        raise _refuse(name, w, give)

    def check(name: str, value: Any) -> tuple:
        if isinstance(value, str):
            return (one(name, value),)
        if isinstance(value, (bytes, bytearray, dict)) or not isinstance(value, Iterable):
            raise _refuse(name, value, give)
        return tuple(one(name, w) for w in value)

    return check


def size(*, none: bool = False) -> Checker:
    """A size in bytes: a whole number of at least 1, or a string such as '2GB' (read by the caller)."""
    give = "a size such as '2GB' or a number of bytes of at least 1" + (", or None" if none else "")
    as_int = integer(1)

    def check(name: str, value: Any) -> int | str | None:
        if value is None and none:
            return None
        if isinstance(value, str):
            return _clean_text(name, value, give, empty=False)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _refuse(name, value, give)
        try:
            return as_int(name, value)
        except InputError:
            raise _refuse(name, value, give, typed=False) from None

    return check


def function(*, none: bool = False) -> Checker:
    """Something callable (a function, a lambda)."""
    give = "a function" + (", or None" if none else "")

    def check(name: str, value: Any) -> Any:
        if value is None and none:
            return None
        if not callable(value):
            raise _refuse(name, value, give)
        return value

    return check
