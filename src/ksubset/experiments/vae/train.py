"""Training one method: the epoch loop, data parallelism, per-epoch checkpoints and resume.

The same code runs in one process and under ``torchrun --nproc_per_node=N``: when ``WORLD_SIZE > 1`` the loss
module is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, nccl on CUDA), every
rank trains on its :class:`~torch.utils.data.DistributedSampler` shard with ``batch / N`` images per step
(so one step still sees ``batch`` images) and its own random generator, evaluation is sharded and summed,
and only rank 0 writes files.

One unit of resumption is one epoch of one method. After every epoch rank 0 writes, atomically (temporary
file, then ``os.replace``), ``checkpoint.pt`` with the model, the optimiser, every rank's generator state,
the epoch and the metrics so far, then ``metrics.json``. A restarted run loads the checkpoint and continues
with the next epoch exactly as if it had not stopped (same world size; with another one the generators are
re-seeded from the epoch).
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ..common import atomic_write_bytes, atomic_write_json, progress
from .data import MnistData
from .evaluate import all_reduce_sums, evaluate, iwae, test_inputs
from .methods import Method, VAELoss
from .model import DiscreteVAE, images_to_float

__all__ = ["Distributed", "init_distributed", "finish_distributed", "Trainer", "derived_seed"]


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment (one process: no group)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(0, 1, "cuda" if use_cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), f"cuda:{local}" if use_cuda else "cpu")


def finish_distributed(env: Distributed, *, succeeded: bool = True) -> None:
    """Leave the process group that :func:`init_distributed` joined (no-op in one process).

    Whatever still references the group is collected first: a :class:`DistributedDataParallel` module's
    reducer destroyed after the group (at interpreter exit) aborted a rank with "terminate called without an
    active exception" in about one run in five, after all its work was done. Then, if every rank got here
    (``succeeded``), a barrier, so that no rank tears the group down while another still uses it.
    """
    if env.world <= 1 or not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if succeeded:
        dist.barrier()
    dist.destroy_process_group()


class Trainer:
    """One method's model, optimiser, generators and history, resumable from ``run_dir/checkpoint.pt``.

    Args:
        method: the method (estimator, KL term, learning rate).
        data: the images (uint8).
        cfg: ``batch``, ``binarize``, ``eval_samples``, ``seed`` (and anything else recorded with the run).
        run_dir: this method's folder.
        env: the distributed environment (:func:`init_distributed`).
        show_progress: progress bar with the running loss (rank 0 only).
        fresh: ignore an existing checkpoint.
    """

    def __init__(self, method: Method, data: MnistData, cfg: dict[str, Any], run_dir: Path, env: Distributed,
                 *, show_progress: bool = False, fresh: bool = False) -> None:
        if cfg["batch"] % env.world:
            raise ValueError(f"batch ({cfg['batch']}) must be divisible by the number of processes ({env.world})")
        self.method, self.data, self.cfg, self.env = method, data, cfg, env
        self.run_dir = Path(run_dir)
        self.show_progress = show_progress and env.main
        torch.manual_seed(derived_seed(cfg["seed"], method.name, "init"))  # same initial model on every rank
        self.vae = DiscreteVAE().to(env.device)
        self.loss = VAELoss(self.vae, method)
        self.step_module: torch.nn.Module = self.loss
        if env.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            cuda = env.device.startswith("cuda")
            self.step_module = DistributedDataParallel(self.loss, device_ids=[torch.device(env.device)] if cuda
                                                       else None)
        # the fused kernel: 3 ms instead of 9-20 ms per step for these 1.3M parameters on one CPU thread
        self.opt = torch.optim.Adam(self.vae.parameters(), lr=method.lr, fused=True)
        self.gen = torch.Generator(device=env.device).manual_seed(derived_seed(cfg["seed"], method.name, env.rank))
        # the sampler only needs len() of its data set: a range of the row indices serves
        rows: Any = range(data.train_x.shape[0])
        self.sampler: DistributedSampler = DistributedSampler(
            rows, num_replicas=env.world, rank=env.rank, shuffle=True,
            seed=derived_seed(cfg["seed"], method.name, "shuffle") % 2**31)
        self.x_test = test_inputs(data.test_x, cfg["binarize"], derived_seed(cfg["seed"], "binarize"))
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        if not fresh:
            self._load()
        elif env.main and (self.run_dir / "iwae.json").exists():
            (self.run_dir / "iwae.json").unlink()  # bounds of the discarded run

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def _load(self) -> None:
        if not self.checkpoint_path.exists():
            return
        state = torch.load(self.checkpoint_path, map_location=self.env.device, weights_only=True)
        self.vae.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        gens = state["generators"]
        if len(gens) == self.env.world:
            self.gen.set_state(gens[self.env.rank].cpu())  # generator states are CPU byte tensors, CUDA ones too
        else:  # another world size: a fresh, deterministic stream for this rank from this epoch on
            self.gen.manual_seed(derived_seed(self.cfg["seed"], self.method.name, self.env.rank, self.epoch))

    def save(self) -> None:
        """Write the checkpoint and ``metrics.json`` atomically (rank 0; every rank must call it)."""
        gens: list[torch.Tensor | None] = [self.gen.get_state()]
        if self.env.world > 1:
            gens = [None] * self.env.world
            dist.all_gather_object(gens, self.gen.get_state().cpu())
        if self.env.main:
            payload = {"model": self.vae.state_dict(), "optimizer": self.opt.state_dict(), "epoch": self.epoch,
                       "history": self.history,
                       "generators": [g.cpu() for g in gens if g is not None], "world_size": self.env.world,
                       "method": asdict(self.method), "config": self.cfg}
            buf = io.BytesIO()
            torch.save(payload, buf)
            atomic_write_bytes(self.checkpoint_path, buf.getvalue())
            atomic_write_json(self.run_dir / "metrics.json", {"method": asdict(self.method), "config": self.cfg,
                                                              "epochs": self.history})
        self.env.barrier()

    def _batches(self):
        self.sampler.set_epoch(self.epoch)
        idx = torch.tensor(list(self.sampler), dtype=torch.long)
        per = self.cfg["batch"] // self.env.world
        return [idx[i : i + per] for i in range(0, idx.numel(), per)]

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training shard; returns the mean training loss and its parts (all ranks)."""
        self.loss.train()
        t0 = time.perf_counter()
        batches = self._batches()
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "count": 0.0}
        bar = progress(batches, desc=f"{self.method.name} epoch {self.epoch + 1}", enabled=self.show_progress)
        for i, ib in enumerate(bar):
            x = images_to_float(self.data.train_x[ib]).to(self.env.device)
            if self.cfg["binarize"]:
                x = torch.bernoulli(x, generator=self.gen)
            loss, recon, kl = self.step_module(x, x, self.gen)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            n = x.shape[0]
            for key, v in (("loss", loss.detach()), ("recon", recon), ("kl", kl)):
                sums[key] += float(v) * n
            sums["count"] += n
            if self.show_progress and hasattr(bar, "set_postfix") and i % 20 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / sums['count']:.2f}")
        sums = all_reduce_sums(sums)
        c = sums["count"]
        return {"train_loss": sums["loss"] / c, "train_recon": sums["recon"] / c, "train_kl": sums["kl"] / c,
                "train_seconds": time.perf_counter() - t0}

    def _shard(self) -> torch.Tensor:
        return self.x_test[self.env.rank :: self.env.world]

    def evaluate(self) -> dict[str, float]:
        """Test negative ELBO (exact samples, exact KL) and the official metric, summed over the ranks' shards."""
        self.vae.eval()
        t0 = time.perf_counter()
        gen = torch.Generator(device=self.env.device).manual_seed(
            derived_seed(self.cfg["seed"], "eval", self.env.rank))  # the same draws every epoch
        s = all_reduce_sums(evaluate(self.vae, self._shard(), self.method.k, samples=self.cfg["eval_samples"],
                                     generator=gen))
        c = s["count"]
        return {"test_nelbo": (s["recon"] + s["kl"]) / c, "test_recon": s["recon"] / c, "test_kl": s["kl"] / c,
                "test_official": (s["recon"] + s["kl_official"]) / c, "test_kl_official": s["kl_official"] / c,
                "eval_seconds": time.perf_counter() - t0}

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate, append to the history and checkpoint."""
        row = {"epoch": self.epoch + 1, **self.train_epoch()}
        row.update(self.evaluate())
        self.epoch += 1
        self.history.append(row)
        self.save()
        return row

    def final_iwae(self, samples: int, images: int | None) -> dict[str, Any]:
        """IWAE bound on the first ``images`` test images at the current epoch, cached in ``iwae.json``.

        Kept out of the checkpoint so that a report-only process can add bounds while training runs.
        """
        path = self.run_dir / "iwae.json"
        cached = json.loads(path.read_text()) if path.exists() else {}
        key = f"epoch{self.epoch}-S{samples}-N{images}"
        if key not in cached:
            self.vae.eval()
            t0 = time.perf_counter()
            x = self.x_test[:images][self.env.rank :: self.env.world]
            gen = torch.Generator(device=self.env.device).manual_seed(
                derived_seed(self.cfg["seed"], "iwae", self.env.rank))
            s = all_reduce_sums(iwae(self.vae, x, self.method.k, samples=samples, generator=gen))
            cached[key] = {"epoch": self.epoch, "samples": samples, "images": int(s["count"]),
                           "iwae": s["iwae"] / s["count"], "seconds": time.perf_counter() - t0}
            if self.env.main:
                atomic_write_json(path, cached)
            self.env.barrier()
        return cached[key]


def epochs_per_hour(history: list[dict[str, Any]]) -> float:
    """Mean epochs per hour of training plus evaluation over the recorded epochs."""
    secs = [r["train_seconds"] + r["eval_seconds"] for r in history]
    return 3600.0 / (sum(secs) / len(secs)) if secs else math.nan
