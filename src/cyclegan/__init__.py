"""CycleGAN: unpaired image-to-image translation (Zhu et al., ICCV 2017)."""

__version__ = "0.1.0"
