"""The mixture order: seeded, resumable, shares follow the mixing weights, one modality = DataOrder."""

from collections import Counter

import pytest

from trainers.common import DataOrder
from trainers.mixture import BLOCK, MixtureOrder

SIZES = {"a": 50, "b": 70, "c": 30}
MIX = {"a": 1.0, "b": 2.0, "c": 1.0}
CAPTION = {"a": 0.25, "b": 0.0, "c": 1.0}


def _order(seed=0):
    return MixtureOrder(SIZES, MIX, CAPTION, seed)


def test_same_seed_same_draws_other_seed_differs():
    assert _order(3).take(500) == _order(3).take(500)
    assert _order(3).take(500) != _order(4).take(500)


def test_resume_mid_block_continues_the_same_order():
    straight = _order()
    expected = straight.take(BLOCK + 900)  # crosses a block boundary
    first = _order()
    head = first.take(333)
    resumed = _order()
    resumed.load_state_dict(first.state_dict())
    tail = resumed.take(len(expected) - 333)
    assert head + tail == expected


def test_shares_and_tasks_follow_the_weights():
    draws = _order().take(30_000)
    counts = Counter(d.modality for d in draws)
    for name, weight in MIX.items():
        # 30k draws: the standard error of a share is <= 0.003, so 0.015 is five of them
        assert counts[name] / len(draws) == pytest.approx(weight / sum(MIX.values()), abs=0.015)
    captions = Counter(d.modality for d in draws if d.task == "caption")
    assert captions["a"] / counts["a"] == pytest.approx(0.25, abs=0.02)
    assert captions["b"] == 0 and captions["c"] == counts["c"]


def test_every_item_of_a_modality_comes_once_per_epoch():
    draws = [d for d in _order().take(2_000) if d.modality == "c"]
    first_epoch = [d.index for d in draws[:SIZES["c"]]]
    assert sorted(first_epoch) == list(range(SIZES["c"]))


def test_one_modality_draws_what_data_order_draws():
    order = MixtureOrder({"image": 40}, {"image": 1.0}, {"image": 0.0}, seed=5)
    assert [d.index for d in order.take(130)] == DataOrder(40, 5).take(130)
    assert {d.task for d in order.take(100)} == {"generate"}


@pytest.mark.parametrize("mix, caption, needle", [({"a": 0.0}, {"a": 0.0}, "mix_weight"),
                                                  ({"a": 1.0}, {"a": 1.5}, "caption_weight")])
def test_bad_weights_are_clear_errors(mix, caption, needle):
    with pytest.raises(ValueError, match=needle):
        MixtureOrder({"a": 10}, mix, caption, 0)


def test_a_checkpoint_of_another_mixture_is_refused():
    state = _order().state_dict()
    with pytest.raises(ValueError, match="mixture"):
        MixtureOrder({"a": 5}, {"a": 1.0}, {"a": 0.0}, 0).load_state_dict(state)
