"""The reduced (bottleneck) width of excitation MLPs, shared by every module that reduces."""


def reduced_width(channels: int, reduction: float, *, divisor: int = 8, min_width: int = 8) -> int:
    """``channels / reduction`` rounded to the nearest multiple of ``divisor``, at least ``min_width``.

    timm's ``make_divisible`` rounds this way (SE at C=64, r=16 gets 8 hidden units, not 4); plain
    ``C // r`` would reach 0 at small C. The SE paper takes d = C/r, also on its CIFAR ResNets
    (16, 32, 64 channels: 1, 2 and 4 units, as senet.pytorch's C // r), where these defaults give 8
    (an effective r of 2, 4 and 8). ``divisor=1, min_width=1`` gives the paper's C/r, rounded half
    up and never below one unit: the authors' ``C // r`` floors, which differs where C/r has a
    fraction of one half or more (MobileNetV2's 24 channels at r = 16: 2 here, 1 there).
    """
    if reduction <= 0:
        raise ValueError(f"reduction must be > 0, got {reduction}")
    if divisor < 1 or min_width < 1:
        raise ValueError(f"divisor and min_width must be >= 1, got {divisor}, {min_width}")
    exact = channels / reduction
    rounded = int(exact + divisor / 2) // divisor * divisor
    return max(min_width, rounded)
