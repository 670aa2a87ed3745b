"""The harness's entry points take a pair and a small options object (issue 19); the import
graph and the size of modules and functions are checked project-wide in tests/test_layout.py."""

import inspect

from parity.harness.localize import localize, localize_gradients
from parity.harness.trajectory import trajectory


def test_entry_points_take_a_pair_and_an_options_object():
    for fn in (localize, localize_gradients, trajectory):
        params = list(inspect.signature(fn).parameters)
        assert params[0] == "pair" and params[-1] == "options" and len(params) <= 5, fn.__name__
