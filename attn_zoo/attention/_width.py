"""The reduced (bottleneck) width of excitation MLPs, shared by every module that reduces."""


def reduced_width(channels: int, reduction: float, *, divisor: int = 8, min_width: int = 8) -> int:
    """``channels / reduction`` rounded to the nearest multiple of ``divisor``, at least ``min_width``.

    timm's ``make_divisible`` rounds this way (SE at C=64, r=16 gets 8 hidden units, not 4); plain
    ``C // r`` would reach 0 at small C. The SE paper's d = C/r never needed rounding (its ResNets have
    C ≥ 256 where SE goes), and CIFAR reproductions (senet.pytorch) take C // r: 1, 2 and 4 units at
    16, 32 and 64 channels, where these defaults give 8 (an effective r of 2, 4 and 8).
    ``divisor=1, min_width=1`` gives the paper's C/r (rounded half up, never below one unit).
    """
    if reduction <= 0:
        raise ValueError(f"reduction must be > 0, got {reduction}")
    if divisor < 1 or min_width < 1:
        raise ValueError(f"divisor and min_width must be >= 1, got {divisor}, {min_width}")
    exact = channels / reduction
    rounded = int(exact + divisor / 2) // divisor * divisor
    return max(min_width, rounded)
