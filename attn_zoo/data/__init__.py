"""Lightning data modules."""
from attn_zoo.data.cifar import CifarDataModule
from attn_zoo.data.embedded import EmbeddedCIFAR10

__all__ = ["CifarDataModule", "EmbeddedCIFAR10"]
