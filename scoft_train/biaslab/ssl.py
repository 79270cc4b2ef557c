"""The lab's label-free feature space for L_P / L_C: a judge-format trunk (no heads)
trained self-supervised on the web corpus images, the stand-in for DINO / DreamSim.

SimCLR-style: two augmented views of each image, a projection MLP, NT-Xent with
temperature `TEMPERATURE`; the projection is dropped after training and the trunk's
feature maps serve as the backbone `biaslab-ssl` (features.JudgeDistance). No label of
any kind is read: not the culture, not the concept, not the stereotype flag, and not
the captions. Augmentations: random resized crop (scale 0.5..1), horizontal flip, a
brightness gain (0.75..1.15, the corpus's dusk range), pixel noise. No hue jitter: a
culture's palette is what a general-purpose encoder of this world should see, as DINO
sees colour. Images are float [N, 3, 32, 32] in [-1, 1], VAE round-tripped (the
generated images L_P / L_C compare are VAE-decoded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..judgenet import JudgeNet
from ..progress import OnStep
from .training import batch_indices, optimizer_and_schedule, run_steps

TEMPERATURE = 0.2
PROJECTION = 64


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random view of each image [B, 3, H, W] in [-1, 1] (same shape)."""
    b = images.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator)
    scale = (0.5 + 0.5 * rand(b)).sqrt()  # side fraction of the crop (area 0.5..1)
    shift = (1 - scale)[:, None] * (2 * rand(b, 2) - 1)
    flip = torch.where(rand(b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gain = (0.75 + 0.4 * rand(b, 1, 1, 1)).to(images.device)
    noise = 0.03 * torch.randn(images.shape, generator=generator).to(images.device)
    return ((views + 1) * gain - 1 + noise).clamp(-1, 1)


def nt_xent(z: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """SimCLR's loss for projections z [2B, D] where rows i and i+B are two views of one image."""
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def train_ssl_encoder(images: torch.Tensor, steps: int, batch: int, lr: float, seed: int, width: int = 32,
                      on_step: OnStep | None = None) -> tuple[JudgeNet, list[dict]]:
    """A head-less judge-format trunk trained by SimCLR on `images` (frozen, eval) and its history."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = JudgeNet({}, width).to(images.device)
        projection = nn.Sequential(nn.Linear(4 * width, 4 * width), nn.SiLU(),
                                   nn.Linear(4 * width, PROJECTION)).to(images.device)
    generator = torch.Generator().manual_seed(seed)
    optimizer, schedule = optimizer_and_schedule([*trunk.parameters(), *projection.parameters()], lr, steps)
    trunk.train()

    def step_fn(_step: int) -> dict:
        x = images[batch_indices(len(images), batch, generator)]
        views = torch.cat([augment(x, generator), augment(x, generator)])
        loss = nt_xent(projection(trunk.embed(views)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return {"loss": loss.item()}

    history = run_steps("ssl", steps, step_fn, on_step)
    return trunk.requires_grad_(False).eval(), history
