"""The random-mask control of a lottery ticket: same shapes, same kept count per layer."""

from __future__ import annotations

import torch

from learnprune.methods.ticket import random_masks_like


def test_random_masks_keep_each_layers_count_at_random_places() -> None:
    ticket = {
        "fc1.weight": torch.tensor([[True, False, False, False], [True, True, False, False]]),
        "fc2.weight": torch.tensor([[False, False, True]]),
        "fc3.weight": torch.zeros(2, 2, dtype=torch.bool),
    }
    random = random_masks_like(ticket, seed=3)
    assert list(random) == list(ticket)
    # kept counts by hand: fc1 1 + 2 = 3 of 8, fc2 1 of 3, fc3 0 of 4
    assert {name: int(mask.sum()) for name, mask in random.items()} == {
        "fc1.weight": 3,
        "fc2.weight": 1,
        "fc3.weight": 0,
    }
    assert all(random[n].shape == ticket[n].shape and random[n].dtype == torch.bool for n in ticket)
    assert all(torch.equal(random[n], m) for n, m in random_masks_like(ticket, seed=3).items())
    # the places are random: over seeds fc1's 3 kept entries land on every one of its 8
    hits = sum(random_masks_like(ticket, seed=s)["fc1.weight"].int() for s in range(40))
    assert bool((hits > 0).all()) and int(hits.sum()) == 40 * 3
