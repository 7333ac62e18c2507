"""The reduced (bottleneck) width of excitation MLPs, shared by every module that reduces."""


def reduced_width(channels: int, reduction: float, *, divisor: int = 8, min_width: int = 8) -> int:
    """``channels / reduction`` rounded to the nearest multiple of ``divisor``, at least ``min_width``.

    The reference SE-ResNets round this way (SE at C=64, r=16 has 8 hidden units, not 4); plain
    ``C // r`` would reach 0 at small C. ``divisor=1, min_width=1`` gives the paper's exact C/r
    (rounded, never below one unit).
    """
    if reduction <= 0:
        raise ValueError(f"reduction must be > 0, got {reduction}")
    if divisor < 1 or min_width < 1:
        raise ValueError(f"divisor and min_width must be >= 1, got {divisor}, {min_width}")
    exact = channels / reduction
    rounded = int(exact + divisor / 2) // divisor * divisor
    return max(min_width, rounded)
