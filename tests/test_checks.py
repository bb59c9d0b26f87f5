"""The shared validators (vispos.utils.checks), schedule and seeding used by the evaluations."""
import math

import pytest
import torch

from vispos.eval.common import lr_at, parse_list
from vispos.utils import checks as C
from vispos.utils.seeding import generator, mix_seed, torch_seed


def test_check_int_names_value_and_expected_form():
    assert C.check_int(3, "steps", 1) == 3
    assert C.check_int(None, "stop_after", 1, allow_none=True) is None
    with pytest.raises(ValueError, match=r"steps must be an int >= 1, got 0"):
        C.check_int(0, "steps", 1)
    with pytest.raises(TypeError, match=r"steps must be an int >= 1, got 2.0"):
        C.check_int(2.0, "steps", 1)
    with pytest.raises(TypeError, match="got True"):
        C.check_int(True, "steps", 1)
    with pytest.raises(ValueError, match=r"<= 4, got 5"):
        C.check_int(5, "k", 1, 4)
    assert C.check_int(8, "dim", 2, multiple_of=2) == 8
    with pytest.raises(ValueError, match=r"dim must be an even int >= 2, got 7"):
        C.check_int(7, "dim", 2, multiple_of=2)
    with pytest.raises(ValueError, match=r"a multiple of 4, got 6"):
        C.check_int(6, "size", 1, multiple_of=4)
    import numpy as np

    assert C.check_int(np.int64(3), "n") == 3 and type(C.check_int(np.int64(3), "n")) is int


def test_check_number_bounds_open_closed_and_finite():
    assert C.check_number(0.5, "ema", 0.0, 1.0, max_open=True) == 0.5
    assert C.check_number(0, "wd", 0) == 0
    with pytest.raises(ValueError, match=r"ema must be a finite number >= 0.0 and < 1.0, got 1.0"):
        C.check_number(1.0, "ema", 0.0, 1.0, max_open=True)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got 0"):
        C.check_number(0, "lr", 0, min_open=True)
    with pytest.raises(ValueError, match="got inf"):
        C.check_number(math.inf, "lr", 0)
    assert C.check_number(math.inf, "base", 0, finite=False) == math.inf
    with pytest.raises(TypeError, match="got '1'"):
        C.check_number("1", "lr")


def test_other_validators():
    assert C.check_size(16) == (16, 16) and C.check_size([8, 12]) == (8, 12)
    with pytest.raises(ValueError, match=r"size must be a positive int or \[H, W\]"):
        C.check_size([0, 4])
    with pytest.raises(TypeError, match="got 'x'"):
        C.check_size("x")
    assert C.check_choice("euler", "sampler", ("euler", "heun")) == "euler"
    with pytest.raises(ValueError, match=r"sampler must be one of 'euler', 'heun', got 'rk4'"):
        C.check_choice("rk4", "sampler", ("euler", "heun"))
    with pytest.raises(TypeError, match="amp must be true or false, got 1"):
        C.check_bool(1, "amp")
    with pytest.raises(TypeError, match="pe_kwargs must be a mapping"):
        C.check_mapping([1], "pe_kwargs")
    assert C.check_len(8, "train_len") == 8.0 and isinstance(C.check_len(8, "n", integer=True), int)
    with pytest.raises(ValueError, match="train_len"):
        C.check_len(0.5, "train_len")
    with pytest.raises(ValueError, match="does not exist"):
        C.check_path("/nonexistent/x.pt", "checkpoint", kind="file")


def test_lr_at_warmup_then_constant_or_cosine():
    assert lr_at(0, 1.0, warmup=4) == 0.25 and lr_at(3, 1.0, warmup=4) == 1.0
    assert lr_at(100, 1.0, warmup=4) == 1.0  # constant after warm-up
    assert lr_at(4, 1.0, 4, total=14, schedule="cosine") == 1.0
    assert lr_at(9, 1.0, 4, total=14, schedule="cosine") == pytest.approx(0.5)
    assert lr_at(14, 1.0, 4, total=14, schedule="cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, 2.0) == 2.0  # no warm-up
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_at(0, 1.0, schedule="linear")
    with pytest.raises(TypeError, match="total must be an int"):
        lr_at(5, 1.0, 1, schedule="cosine")


def test_parse_list_and_seeds():
    assert parse_list("1, 2 3", int, "scales") == [1, 2, 3] and parse_list(None, int, "x") is None
    with pytest.raises(ValueError, match="scales must be a non-empty list"):
        parse_list("", float, "scales")
    # a pure function of its integers, neighbours unrelated, within range
    assert mix_seed(1, 2) == mix_seed(1, 2) != mix_seed(1, 3) != mix_seed(2, 1)
    assert 0 <= mix_seed(7, 9) < 2 ** 63 and 0 <= torch_seed(7, 9) < 2 ** 31
    assert torch_seed(7, 9) == mix_seed(7, 9) & 0x7FFFFFFF


def test_generator_is_a_seeded_cpu_generator():
    """The evaluations' generators: the same stream as ``torch.Generator().manual_seed(seed)``."""
    assert torch.equal(torch.rand(5, generator=generator(7)), torch.rand(5, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(torch.rand(5, generator=generator(7)), torch.rand(5, generator=generator(8)))
