"""Run by ``torchrun --nproc_per_node=2`` from test_vae_training.py (not a test module itself).

Trains SIMPLE + exact KL for two epochs on the synthetic fixture through the experiment's Trainer (DDP over
gloo), then rank 0 writes ``result.json``: the fixture's test −ELBO before and after, and the largest
difference between the ranks' parameters.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ksubset.experiments.vae.data import synthetic_mnist
from ksubset.experiments.vae.methods import METHODS
from ksubset.experiments.vae.train import Trainer, finish_distributed, init_distributed

out = Path(sys.argv[1])
torch.set_num_threads(1)
env = init_distributed("cpu")
data = synthetic_mnist(400, 100, seed=0)
cfg = {"batch": 20, "binarize": False, "eval_samples": 2, "seed": 0}
trainer = Trainer(METHODS["simple_exact"], data, cfg, out / "run", env)
before = trainer.evaluate()["test_nelbo"]
for _ in range(2):
    trainer.run_epoch()
after = trainer.history[-1]["test_nelbo"]
flat = torch.cat([p.detach().flatten() for p in trainer.vae.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(env.world)]
dist.all_gather(gathered, flat)
if env.main:
    diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
    (out / "result.json").write_text(json.dumps({"world": env.world, "before": before, "after": after,
                                                 "param_diff": diff, "epochs": trainer.epoch}))
del trainer  # (the DDP module holds the process group: see finish_distributed)
finish_distributed(env)
