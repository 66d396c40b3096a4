"""The options each shipped family recommends to each method (``adapt.method`` in configs/problem/<family>.yaml):
the effective values for every (family, method) pair are pinned here, whatever way the files write them, and
the command line composes to the same values."""
import math

import pytest

from pinn_lora.core.registry import METHODS, PROBLEMS
from pinn_lora.runs.adapt import method_recommendation, recommendations

SHIPPED_FAMILIES = ["allen_cahn", "burgers", "helmholtz"]  # the families whose recommendations are pinned
BUILT_IN_METHODS = ["asymlora", "c3la", "cla", "cola", "dora", "full", "loraplus", "lora", "odelora", "odlora",
                    "paca", "pissa", "rac", "rc3la", "rcla", "riemannian", "rslora", "scratch"]
ODELORA = {"allen_cahn": {"lr": 1.0e-3, "precondition": "rmsprop"},
           "burgers": {"lr": 1.0e-3, "precondition": "rmsprop"},
           "helmholtz": {"lr": 0.1, "precondition": "none"}}


def expected(family: str, method: str) -> dict:
    """Today's recommendations: lr 1e-3 for the methods that train every weight, ODELoRA's own per family,
    lr 3e-3 for every other adapter."""
    if method in ("scratch", "full"):
        return {"lr": 1.0e-3}
    if method == "odelora":
        return ODELORA[family]
    return {"lr": 3.0e-3}


def test_the_pinned_pairs_are_every_pair():
    assert PROBLEMS.names() == sorted(SHIPPED_FAMILIES)
    assert set(METHODS.names()) == set(BUILT_IN_METHODS)


@pytest.mark.parametrize("family", SHIPPED_FAMILIES)
def test_recommendations_of_every_pair(family):
    rec = recommendations(family)
    for method in BUILT_IN_METHODS:
        got = method_recommendation(rec, method)
        want = expected(family, method)
        assert got.keys() == want.keys(), (family, method, got)
        for key, value in want.items():
            if isinstance(value, float):
                assert math.isclose(got[key], value, rel_tol=0, abs_tol=0), (family, method, key, got[key])
            else:
                assert got[key] == value, (family, method, key, got[key])


@pytest.mark.parametrize("family", SHIPPED_FAMILIES)
def test_the_method_built_for_a_run_takes_them(family):
    """What ``adapt_to`` builds when the options are left out: the recommendation, else the class default."""
    from pinn_lora.methods import get_method

    rec = recommendations(family)
    for method in BUILT_IN_METHODS:
        meth = get_method(method, **method_recommendation(rec, method))
        for key, value in expected(family, method).items():
            assert meth.options[key] == value, (family, method, key)
