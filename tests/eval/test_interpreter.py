"""kcc.eval.interpreter.run: the observer sees every node's value; a rewrite replaces it for the readers."""

import numpy as np

from kcc.eval.interpreter import run
from kcc.ir import ops as O
from kcc.ir.graph import Graph


def test_a_rewrite_replaces_a_value_for_its_readers_and_the_observer_sees_it():
    g = Graph()
    x = g.input(0, (1, 2, 2, 2))
    a = g.add(O.Unary("neg"), (x,), "a")
    g.outputs = [g.add(O.Unary("abs"), (a,), "b")]
    xi = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2) - 4
    seen = {}
    plain = run(g, [xi])[0]
    got = run(g, [xi], lambda n, v: seen.__setitem__(n.name, v),
              rewrite=lambda n, v: np.round(v / 3) * 3 if n is a else v)[0]
    np.testing.assert_array_equal(plain, np.abs(xi))
    np.testing.assert_array_equal(seen["a"], np.round(-xi / 3) * 3)
    np.testing.assert_array_equal(got, np.abs(np.round(-xi / 3) * 3))
