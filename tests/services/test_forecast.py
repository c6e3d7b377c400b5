"""Holt's linear smoothing as server/services/predictions.py fits it: pure math, no I/O."""

import math
from datetime import UTC, datetime, timedelta

import pytest

from server.services.predictions import forecast, holt_sse, typical_interval

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


def series(values: list[float], step: float = 60.0) -> tuple[list[datetime], list[float]]:
    return [T0 + timedelta(seconds=step * i) for i in range(len(values))], values


def test_linear_trend_continues_the_line_at_the_series_interval():
    times, values = series([2.0 * i + 5 for i in range(100)])

    result = forecast(times, values, 10)

    assert result.interval == 60.0
    assert result.n == 100
    for step, (ts, value) in enumerate(result.points, start=1):
        assert ts == times[-1] + timedelta(seconds=60 * step)
        assert value == pytest.approx(2.0 * (99 + step) + 5, abs=1e-6)
    assert result.rmse == pytest.approx(0.0, abs=1e-9)


def test_noisy_trend_stays_close_to_the_line_and_reports_its_error():
    noise = [0.3 if i % 2 else -0.3 for i in range(200)]
    times, values = series([0.5 * i + 10 + noise[i] for i in range(200)], step=15)

    result = forecast(times, values, 4)

    assert result.interval == 15.0
    for step, (_, value) in enumerate(result.points, start=1):
        assert value == pytest.approx(0.5 * (199 + step) + 10, abs=1.0)
    assert 0.1 < result.rmse < 1.5


def test_constant_series_forecasts_the_constant():
    times, values = series([7.25] * 20)

    result = forecast(times, values, 5)

    assert [v for _, v in result.points] == [7.25] * 5
    assert result.rmse == 0.0


def test_alpha_and_beta_are_inside_the_open_unit_interval():
    times, values = series([math.sin(i / 3) * 10 + i for i in range(300)])

    result = forecast(times, values, 1)

    assert 0 < result.alpha < 1
    assert 0 < result.beta < 1


def test_the_fitted_pair_has_the_smallest_one_step_error_on_the_grid():
    values = [1.0, 3.0, 2.0, 5.0, 4.0, 8.0, 7.0, 9.0]
    times, _ = series(values)

    result = forecast(times, values, 1)

    best = min(holt_sse(values, a / 20, b / 20)[0] for a in range(1, 20) for b in range(1, 20))
    assert result.rmse == pytest.approx(math.sqrt(best / (len(values) - 1)))


def test_interval_is_the_median_spacing_ignoring_repeated_timestamps():
    offsets = [0, 10, 10, 20, 30, 90, 100]
    times = [T0 + timedelta(seconds=s) for s in offsets]

    assert typical_interval(times) == 10.0


@pytest.mark.parametrize(
    ("times", "values", "message"),
    [
        ([T0, T0 + timedelta(seconds=1)], [1.0, 2.0], "need at least 3 readings, have 2"),
        ([T0] * 4, [1.0, 2.0, 3.0, 4.0], "same timestamp"),
    ],
)
def test_unforecastable_series_raise_value_error(times, values, message):
    with pytest.raises(ValueError, match=message):
        forecast(times, values, 3)
