"""Interleaved timing (rapsam_edge.timing), shared by bench and calibrate."""

from rapsam_edge.timing import interleaved


def test_candidates_run_in_turns_and_warmup_rounds_are_dropped():
    order = []
    calls = {"a": {"x": lambda: order.append("a")}, "b": {"x": lambda: order.append("b")}}
    times, errors = interleaved(calls, runs=3, warmup=2)
    assert order == ["a", "b"] * 5
    assert errors == {}
    assert {k: len(v["x"]) for k, v in times.items()} == {"a": 3, "b": 3}


def test_a_failing_candidate_is_dropped_and_the_others_go_on():
    boom = RuntimeError("no GPU")
    seen = []

    def fail() -> None:
        raise boom

    calls = {"bad": {"first": fail, "second": lambda: seen.append("bad second")},
             "good": {"x": lambda: seen.append("good")}}
    rounds = []
    times, errors = interleaved(calls, runs=2, warmup=1, on_round=lambda d, t: rounds.append((d, t)))
    assert errors == {"bad": ("first", boom)}
    assert "bad second" not in seen  # the rest of its round is skipped too
    assert len(times["good"]["x"]) == 2
    assert rounds == [(1, 3), (2, 3), (3, 3)]
