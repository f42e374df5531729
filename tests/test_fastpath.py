"""The fast path's money rule, against the compiled module and its pure twin alike."""

from __future__ import annotations

import subprocess
import sys
from array import array
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import fastpath
from gateway.fastpath import _engine_py

energies = st.integers(0, _engine_py.ENERGY_MAX_WH)
prices = st.integers(0, _engine_py.PRICE_MAX)


def test_cost_rounds_half_up(engine: ModuleType) -> None:
    # 1 Wh at 0.5000 yuan/kWh (5000 units) = 0.0005 yuan = 5 units exactly
    assert engine.cumulative_cost(1, 5000) == 5
    # 1 Wh at 0.0500 yuan/kWh = 0.5 units -> rounds half up to 1
    assert engine.cumulative_cost(1, 500) == 1
    # 1 Wh at 0.0499 yuan/kWh = 0.499 units -> 0
    assert engine.cumulative_cost(1, 499) == 0
    # 12345.67 kWh at 0.6128 yuan/kWh = 7565.426576 yuan -> 75654266 units (0.0001 yuan)
    assert engine.cumulative_cost(12_345_670, 6128) == 75_654_266


def test_many_small_intervals_cost_what_their_sum_costs(engine: ModuleType) -> None:
    # 1000 intervals of 7 Wh at 0.0499 yuan/kWh: each alone would round to 0
    posted = 0
    cum = 0
    for _ in range(1000):
        cum += 7
        posted += engine.posted_charge(cum, 499, posted)
    assert posted == engine.cumulative_cost(7000, 499) == 3493


@given(st.lists(st.integers(0, 50_000), min_size=1, max_size=50), prices)
def test_no_drift(engine: ModuleType, steps: list[int], price: int) -> None:
    posted, cum = 0, 0
    for step in steps:
        cum += step
        posted += engine.posted_charge(cum, price, posted)
    assert posted == (cum * price + 500) // 1000


@given(st.lists(st.tuples(energies, prices, st.integers(0, 10**15)), max_size=40))
def test_batch_matches_scalar_and_twin(
    engine: ModuleType, rows: list[tuple[int, int, int]]
) -> None:
    cum = array("q", [r[0] for r in rows])
    price = array("q", [r[1] for r in rows])
    posted = array("q", [r[2] for r in rows])
    twin_posted = array("q", posted)
    out = engine.charge_batch(cum, price, posted)
    twin_out = _engine_py.charge_batch(cum, price, twin_posted)
    assert list(out) == list(twin_out)
    assert list(posted) == list(twin_posted)
    for (e, p, q), charge in zip(rows, out, strict=True):
        assert charge == engine.posted_charge(e, p, q)


@pytest.mark.parametrize(("cum", "price"), [(-1, 1), (10**12 + 1, 1), (1, -1), (1, 10**6 + 1)])
def test_out_of_range_refused(engine: ModuleType, cum: int, price: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        engine.cumulative_cost(cum, price)
    with pytest.raises(ValueError, match="out of range"):
        engine.charge_batch(array("q", [cum]), array("q", [price]), array("q", [0]))


def test_batch_length_mismatch(engine: ModuleType) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        engine.charge_batch(array("q", [1]), array("q", []), array("q", [0]))


def test_compiled_is_active_by_default() -> None:
    assert fastpath.IMPLEMENTATION == "compiled", fastpath.UNAVAILABLE_REASON
    assert fastpath.engine.__file__.endswith(".so")


def test_environment_forces_twin() -> None:
    code = (
        "from gateway import fastpath; print(fastpath.IMPLEMENTATION, fastpath.UNAVAILABLE_REASON)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"GATEWAY_FASTPATH": "pure", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("pure forced by GATEWAY_FASTPATH=pure")


def test_a_stale_compiled_module_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A build from an older _engine.pyx lacks the kernel: the twin is used, and said why.
    import importlib
    import types

    stale = types.ModuleType("gateway.fastpath._engine")
    for name in ("cumulative_cost", "posted_charge", "charge_batch"):
        setattr(stale, name, getattr(_engine_py, name))
    real = importlib.import_module
    monkeypatch.setattr(
        importlib,
        "import_module",
        lambda name, *a: stale if name == "gateway.fastpath._engine" else real(name, *a),
    )
    module, kind, reason = fastpath.load("auto")
    assert (module, kind) == (_engine_py, "pure")
    assert reason is not None and "stale" in reason and "rate_batch" in reason
    with pytest.raises(ImportError, match="stale"):
        fastpath.load("compiled")


def test_the_fast_path_imports_nothing_else_of_the_package() -> None:
    """design.md's layering: gateway.fastpath (kernel, twin, layout, tables) loads no
    other gateway module; its driver, BatchRater, lives in gateway.charging.fast."""
    code = (
        "import sys\n"
        "import gateway.fastpath, gateway.fastpath.tables, gateway.fastpath.layout\n"
        "import gateway.fastpath._engine_py\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('gateway'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.split()
    assert "gateway.fastpath.layout" in loaded
    assert [m for m in loaded if m != "gateway" and not m.startswith("gateway.fastpath")] == []
