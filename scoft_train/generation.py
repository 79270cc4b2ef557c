"""The decoded-generation branch of SCoFT (method.md, step 3).

From a noisy latent z_t, run a short DDIM schedule down to t = 0 with classifier-free
guidance, recording autograd at exactly ONE UNet call (first, last or random step);
all other UNet calls run under no_grad, while the linear DDIM update itself keeps its
graph, so the gradient of the decoded image reaches the LoRA through that one call.
"""

from __future__ import annotations

import torch

GRAD_MODES = ("first", "last", "random")


def branch_timesteps(t: int, steps: int) -> list[int]:
    """`steps` timesteps evenly spaced from t down to 0 (both included); [t, 0] if t < steps-1."""
    if t < steps - 1:
        return [t, 0] if t > 0 else [0]
    return torch.linspace(t, 0, steps).round().long().tolist()


def grad_step_index(mode: str, n_calls: int, generator: torch.Generator | None) -> int:
    if mode == "first":
        return 0
    if mode == "last":
        return n_calls - 1
    if mode == "random":
        return int(torch.randint(n_calls, (1,), generator=generator).item())
    raise ValueError(f"unknown grad mode {mode!r}; choose one of {GRAD_MODES}")


def _split_prediction(output: torch.Tensor, z: torch.Tensor, alpha_bar: torch.Tensor, kind: str):
    """(epsilon, x0) from a UNet output of the given prediction type."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if kind == "epsilon":
        return output, (z - s * output) / a
    if kind == "v_prediction":
        return s * z + a * output, a * z - s * output
    raise ValueError(f"unsupported prediction_type {kind!r}")


def denoise_to_latent(
    unet,
    scheduler,
    z_t: torch.Tensor,
    t: int,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    steps: int = 20,
    cfg: float = 4.5,
    grad_mode: str = "first",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Denoise z_t [1,4,h,w] at timestep t to a clean latent [1,4,h,w].

    cond/uncond: text embeddings [1,77,D] of the caption and of the empty prompt; each
    step is ONE batched UNet call on [uncond, cond]. At cfg 1 the guided output is the
    conditional one, so each step calls the UNet on the caption alone (half the work, same
    result). Returns the predicted z_0.
    """
    timesteps = branch_timesteps(int(t), steps)
    grad_at = grad_step_index(grad_mode, len(timesteps), generator)
    alphas = scheduler.alphas_cumprod.to(z_t.device, torch.float32)
    guided = cfg != 1.0
    context = torch.cat([uncond, cond]) if guided else cond
    kind = scheduler.config.prediction_type
    dtype = unet.dtype  # read once: diffusers walks every submodule for it
    z = z_t
    for i, step_t in enumerate(timesteps):
        with torch.set_grad_enabled(i == grad_at and torch.is_grad_enabled()):
            model_in = (torch.cat([z, z]) if guided else z).to(dtype)
            output = unet(model_in, step_t, encoder_hidden_states=context).sample.float()
        if guided:
            out_uncond, out_cond = output.chunk(2)
            output = out_uncond + cfg * (out_cond - out_uncond)
        eps, x0 = _split_prediction(output, z, alphas[step_t], kind)
        if i + 1 == len(timesteps):
            return x0
        a_next = alphas[timesteps[i + 1]]
        z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    raise AssertionError("unreachable")
