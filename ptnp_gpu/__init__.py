"""ptnp_gpu: atomic models and per-atom statistics from nanoparticle density maps."""
__version__ = "0.1.0"
