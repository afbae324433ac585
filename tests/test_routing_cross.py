"""The cross-model table (controller.routing.CrossStats): B's accuracy given A's vote state is
read off a line in A's own P(right | state), so a rare state does not answer from its own few
questions (where a route's choice would pick their noise), and a state with no line to fit
falls back to its cell rate shrunk as every other table is."""

from __future__ import annotations

import numpy as np

from controller.routing import CalibrationQuestion, CrossStats, VoteStats, shrunk

K = 3


def _questions() -> tuple[list[CalibrationQuestion], dict[str, np.ndarray]]:
    """30 easy questions (A unanimous and right; B right), 20 hard ones (A split between two
    wrong answers; B wrong) and one odd one (A abstains once and says three different things;
    B right)."""
    questions, b_curves = [], {}
    for i in range(30):
        questions.append(CalibrationQuestion(f"e{i}", "7", ("7",) * 4))
        b_curves[f"e{i}"] = np.ones(K)
    for i in range(20):
        questions.append(CalibrationQuestion(f"h{i}", "7", ("1", "2", "1", "2")))
        b_curves[f"h{i}"] = np.zeros(K)
    questions.append(CalibrationQuestion("odd", "7", (None, "4", "5", "6")))
    b_curves["odd"] = np.ones(K)
    return questions, b_curves


def test_a_rare_state_is_read_off_the_line_not_its_own_questions() -> None:
    questions, b_curves = _questions()
    a = VoteStats.fit(questions, n_max=4)
    cross = CrossStats.fit(a, b_curves, K)
    assert cross is not None
    # after 3 draws, (1, 1) is reached only by the odd question, where B was right
    cell = cross.table[3, 1, 1, 0] / cross.weight[3, 1, 1]
    assert cell == 1.0
    old = shrunk(cross.table[3, :, :, 0], cross.weight[3], 1, 1, float(cross.marginal[0]),
                 cross.shrink, cross.pool)  # fmt: skip
    assert old > 0.7  # what the cell said, shrunk toward B's marginal accuracy
    assert a.p_right(3, 1, 1) < 0.4  # A is unsure there: questions like it are hard for B
    assert cross.p_right(3, 1, 1, 1) < 0.4
    assert cross.p_right(3, 3, 0, 1) > 0.9  # A unanimous: B right, as on the easy questions


def test_without_a_line_to_fit_the_cell_rate_is_shrunk() -> None:
    questions, b_curves = _questions()
    a = VoteStats.fit(questions, n_max=4)
    cross = CrossStats.fit(a, b_curves, K)
    assert cross is not None
    # after one draw A is in (1, 0) or, on the odd question's abstention, (0, 0): two states
    assert np.isnan(cross.line[1]).all()
    expected = shrunk(cross.table[1, :, :, 1], cross.weight[1], 0, 0, float(cross.marginal[1]),
                      cross.shrink, cross.pool)  # fmt: skip
    assert cross.p_right(1, 0, 0, 2) == expected
    assert abs(expected - float(cross.marginal[1])) > 0.03  # the cell's own rate counts
