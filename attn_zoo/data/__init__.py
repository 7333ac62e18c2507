"""Lightning data modules, one per ``conf/data/*.yaml``."""
from attn_zoo.data.cifar import CIFAR10, CIFAR100, CifarDataModule, Synthetic
from attn_zoo.data.embedded import EmbeddedCIFAR10
from attn_zoo.data.imagefolder import ImageFolder

__all__ = ["CIFAR10", "CIFAR100", "CifarDataModule", "EmbeddedCIFAR10", "ImageFolder", "Synthetic"]
