"""The reward-model builders' check that a trained proxy learned something (rlhf_lab.engine.preference), on
reports worked out by hand: ln 2 = 0.6931; the chance bound at 5 % is 1.645 * sqrt(0.25 / n) above 0.5."""

import pytest

from rlhf_lab.engine.preference import learned_nothing


def report(final_loss: float, gold_accuracy: float, eval_pairs: int) -> dict:
    return {"final_loss": final_loss, "gold_accuracy": gold_accuracy, "eval_pairs": eval_pairs}


@pytest.mark.parametrize("loss", [0.6931, 0.685, 0.7012])  # |loss - ln 2|: 0.00005, 0.0081, 0.0081
def test_a_loss_stuck_at_ln_2_is_a_stalled_training(loss):
    why = learned_nothing(report(loss, 0.80, 1000))  # whatever the agreement says
    assert why is not None and "ln 2" in why


@pytest.mark.parametrize("accuracy, pairs, chance", [
    (0.54, 100, True),    # bound 1.645 * 0.05 = 0.082 above 0.5: 0.04 is within it
    (0.54, 1000, False),  # bound 1.645 * 0.0158 = 0.026: 0.04 is beyond it
    (0.45, 96, True),     # the reviews tier's build that learned nothing (docs/real-models.md)
    (0.65, 96, False),    # its working build: bound 1.645 * 0.0510 = 0.084, 0.15 beyond it
    (0.58, 96, True),     # 0.08 < 0.084
])
def test_agreement_no_better_than_chance(accuracy, pairs, chance):
    why = learned_nothing(report(0.48, accuracy, pairs))  # a loss far from ln 2 (0.213 below it)
    assert (why is not None) == chance
    if chance:
        assert "no better than chance" in why and f"of {pairs} held-out pairs" in why


def test_a_working_reward_model_passes():
    assert learned_nothing(report(0.595, 0.8286, 1000)) is None  # instance 0's toy reward model (one-thread build)
    assert learned_nothing(report(0.68, 0.8286, 1000)) is None  # 0.013 from ln 2: a noisy last batch, not a stall
