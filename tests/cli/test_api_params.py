"""Every public function of curate.api checks every parameter at the boundary: a hostile
value (a wrong type, None where None means nothing, a bool for a number, NaN or infinity, a
string where a list goes, out of range) is a CurateError whose one-line message starts with
the parameter's name, before anything is opened, loaded or written.

Generated from the signatures: every function, every parameter, hostile values chosen by its
annotation. A new function or parameter without a checker fails here (a new kind of
annotation, or a numeric parameter with no range below, fails too, until it is added).
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
from conftest import run_cli

from curate import api
from curate.core import check
from curate.errors import CurateError, InputError


def _public() -> dict[str, object]:
    return {name: fn for name, fn in inspect.getmembers(api, inspect.isfunction)
            if not name.startswith("_") and fn.__module__ == api.__name__}


# Out-of-range values of every numeric parameter (by name, whatever the function). An empty
# list: every finite value in int64's range is fine.
RANGES = {
    "batch_size": [0, -1], "workers": [-1, -8], "shard_size": [0, -1], "max_pixels": [0, -5], "limit": [0, -1],
    "target_recall": [0, 0.0, 1.01, -0.5], "top_k": [0, -1], "batch_rows": [0], "logit_scale": [0, -1.0],
    "temperature": [0, -0.1], "min_prob": [-0.01, 1.01], "text_weight": [-0.1, 2], "text_min": [-0.1, 1.5],
    "image_max": [-1, 1.5], "k": [0, -1], "search_param": [0, -1], "top_classes": [0, -1], "per_class": [0],
    "seed": [], "min_hit_rate": [-0.1, 1.1], "target_precision": [0, 1.1], "min_support": [0, -1],
    "grid_size": [-1], "threshold": [0, -0.5, 1.0001], "max_index_memory": [0, -1],
    "level": [0, 1, -0.5, 1.5], "target_width": [0, -0.1, 1.5], "image_min": [-0.1, 1.5],
}
# The options objects the functions take (filter's selection and output, ...): not one of them is
# refused naming the parameter, and each field's hostile value is refused naming the field, when made.
OPTIONS = {cls.__name__: cls for cls in (api.FilterSpec, api.FilterOutput, api.SearchQuery, api.SampleSpec,
                                         api.ReportOptions)}


@dataclasses.dataclass(frozen=True)
class _Made:
    """An options object made with one hostile field, inside the call's pytest.raises."""
    cls: type
    field: str
    value: object

    def make(self) -> object:
        return self.cls(**{self.field: self.value})


NAN, INF = float("nan"), float("inf")


def _hostile(fn_name: str, name: str, annotation: str) -> list:
    """What no value of this annotation may be."""
    optional = "None" in annotation
    core = annotation.replace(" | None", "").strip()
    values: list = [object()] + ([] if optional else [None])
    if "Callable" in core:
        values += [5, "print"]
    elif core == "bool":
        values += ["yes", "False", 1, 0.0]
    elif core == "int":
        values += ["5", 1.5, True, NAN, INF, 2 ** 64, *RANGES[name]]
    elif core == "float":
        values += ["0.5", True, NAN, INF, -INF, 1j, *RANGES[name]]
    elif core == "str | int":
        values += [True, 1.5, [1], b"2GB", "", *RANGES[name]]
    elif core in OPTIONS:
        values += [5, "x", {"min_prob": 0.5}]
    elif core.startswith("str | ") and core[6:] in OPTIONS:     # a text, or the options object
        values += [5, b"x", ["x"], "a\x00b"]
    elif core.startswith(("Iterable", "tuple[")):
        values += [5, [5], [None], [""], b"pantry", {"a": 1}]
    elif "Path" in core:
        values += [5, b"ws", "", ["ws"], "a\x00b"]
    elif core == "str":
        values += [5, b"x", ["x"], "a\x00b"] + ([] if (fn_name, name) == ("search", "text") else ["", "  "])
    else:
        pytest.fail(f"{fn_name}({name}: {annotation}): no hostile values for this annotation; add them here")
    return values


def _params(fn) -> dict[str, tuple[str, str]]:
    """Each parameter as (shown, annotation); `**options` are its options class's fields (BuildOptions)."""
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            out.update({n: (f"--{n.replace('_', '-')}", str(a)) for n, a in fn.option_fields.items()})
        else:
            out[p.name] = (f"--{p.name.replace('_', '-')}" if p.kind is p.KEYWORD_ONLY else p.name, str(p.annotation))
    return out


def _cases() -> list:
    out = []
    for fn_name, fn in sorted(_public().items()):
        for name, (shown, annotation) in _params(fn).items():
            for k, v in enumerate(_hostile(fn_name, name, annotation)):
                out.append(pytest.param(fn_name, name, shown, v, id=f"{fn_name}-{name}-{k}"))
            cls = OPTIONS.get(annotation.replace(" | None", "").replace("str | ", "").strip())
            for f in dataclasses.fields(cls) if cls else ():
                for k, v in enumerate(_hostile(fn_name, f.name, str(f.type))):
                    out.append(pytest.param(fn_name, name, f"--{f.name.replace('_', '-')}", _Made(cls, f.name, v),
                                            id=f"{fn_name}-{name}.{f.name}-{k}"))
    return out


@pytest.fixture()
def baseline(tmp_path) -> dict[str, object]:
    """Valid required arguments: paths that do not exist, so that a value no checker refused
    ends in some other error (no workspace, no source) that does not start with its name."""
    return {"source": tmp_path / "photos", "workspace": tmp_path / "ws", "name": "places205-natural"}


@pytest.mark.parametrize(("fn_name", "param", "shown", "value"), _cases())
def test_a_hostile_value_is_refused_naming_the_parameter(baseline, fn_name, param, shown, value):
    fn = _public()[fn_name]
    sig = inspect.signature(fn)
    kwargs = {n: v for n, v in baseline.items() if n in sig.parameters and
              sig.parameters[n].default is inspect.Parameter.empty}
    with pytest.raises(CurateError) as e:
        kwargs[param] = value.make() if isinstance(value, _Made) else value
        fn(**kwargs)
    msg = str(e.value)
    assert msg.startswith(shown + " ") and "\n" not in msg, msg
    assert not (baseline["workspace"]).exists()  # nothing was made


def test_every_public_function_and_parameter_has_a_checker():
    """The same rule read from the decorator: a function with no @check.params, or a
    parameter missing from it, is named here."""
    missing = {name: sorted(set(_params(fn)) - getattr(fn, "checked_params", frozenset()))
               for name, fn in _public().items()}
    assert {k: v for k, v in missing.items() if v} == {}
    assert set(_public()) >= {"build_index", "classify", "filter", "search", "sample", "report", "compare",
                              "dedup", "labels", "must_exist"}


def test_the_checkers_keep_what_they_take():
    """What passes is given on as the function uses it: one label string is one label."""
    assert check.names()("--labels", "pantry") == ("pantry",)
    assert check.names()("--labels", (x for x in ["a", "b"])) == ("a", "b")
    assert check.conditions()("--where", "year=2020") == ("year=2020",)
    assert check.conditions()("--where", [("year", 2020), "city=rome"]) == (("year", "2020"), "city=rome")
    assert check.integer(1)("k", 5) == 5 and type(check.integer(1)("k", _numpy().int64(5))) is int
    assert check.number(0, 1)("--min-prob", 1) == 1.0 and check.probability()("--min-prob", _numpy().float32(0.5))
    assert check.flag()("--clean", _numpy().bool_(True)) is True
    with pytest.raises(InputError, match=r"^--min-prob nan: give a number from 0 to 1$"):
        check.probability()("--min-prob", math.nan)
    with pytest.raises(InputError, match=r"^--batch-size True \(a bool\): give a whole number of at least 1"):
        check.integer(1)("--batch-size", True)


def test_a_call_that_does_not_fit_the_signature_is_a_curate_error(tmp_path):
    with pytest.raises(InputError, match=r"^filter\(\): .*min_probb"):
        api.filter(tmp_path, min_probb=0.5)
    with pytest.raises(InputError, match=r"^search\(\): "):
        api.search()


def _numpy():
    import numpy as np

    return np


def test_one_label_string_is_one_label_and_the_cli_says_what_the_api_says(classified, tmp_path):
    """filter(labels="pantry") used to filter by the letters p, a, n, t, r, y; a NaN the CLI's
    FloatRange lets through meets the same one-line error as a script's."""
    con = __import__("duckdb").connect(str(classified / "curate.duckdb"), read_only=True)
    top = con.execute("SELECT label FROM predictions GROUP BY label ORDER BY count(*) DESC, label LIMIT 1").fetchall()
    con.close()
    label = top[0][0]
    one = api.filter(classified, api.FilterSpec(labels=label, min_prob=0.0))
    assert one.spec.labels == (label,) and one.kept > 0
    assert one.kept == api.filter(classified, api.FilterSpec(labels=[label], min_prob=0.0)).kept

    with pytest.raises(InputError) as e:
        api.filter(classified, api.FilterSpec(min_prob=math.nan))
    r = run_cli("filter", "-w", classified, "--min-prob", "nan", "--out", tmp_path / "x.csv", expect=1)
    assert r.output.strip().splitlines()[-1] == f"curate: {e.value}"
    assert not (tmp_path / "x.csv").exists()
