"""adrpo: Adaptive Divergence Regularized Policy Optimization (Fan et al., NeurIPS 2025).

Shape vocabulary, used by every docstring and reshape comment in the package:

    B   prompts in a batch
    G   samples (generations) per prompt; N = B·G samples in all
    T   tokens of a completion (language models)
    D   flattened data dimensions of one sample (C·H·W for images)
    C, H, W   channels, height, width of an image or latent

Conventions for flow matching (see ``adrpo.core.paths``): t = 0 is noise, t = 1 is data,
x_t = (1 − t)·x0 + t·x1, and the target velocity is u_t = x1 − x0.

Floors (arrows point down only): ``cli`` → ``experiments`` → ``tasks`` → ``flow`` / ``llm``
→ ``core`` / ``rewards`` / ``data`` → ``errors``. ``core`` imports torch, the standard library and
``adrpo.errors`` (the one configuration-error class), nothing else.
"""

__version__ = "0.1.0"
