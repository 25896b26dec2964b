"""Training-step benchmark: our Siamese objective against the faithful naive one, same everything.

One step = forward and backward of the objective on one batch (the optimiser step, identical for both
and independent of the objective, is timed separately). Ours is `siamese.objective.siamese_losses`
with `backward=` (the main graph is freed before the regularisation graph is built), as the trainer
calls it; the baseline is `siamese.reference.naive_siamese_losses` (as the authors' code: deep copies of
the ControlNet and the UNet in every step, the mask ControlNet recomputed by the frozen copy without a
graph, regularisation on the whole batch) and `.backward()` on its loss. Gradients of every trainable
parameter are compared after the warm-up calls.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable

import torch

from siamese.model import SiameseModel
from siamese.objective import siamese_losses
from siamese.reference import naive_siamese_losses

from .timing import interleaved
from .workload import TrainBatch, count_parameters, prepare_networks, train_batch

__all__ = ["VARIANTS", "step_function", "gradients", "grad_diff", "compare_steps", "float64_parity",
           "speedup_by_regularised_samples", "component_times", "deepcopy_seconds"]

PROGRESS = 0.6  # > 1/3: all four terms run
VARIANTS = ("ours", "naive")


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision as the trainer uses it (fp32 weights, autocast forward); a no-op for fp32/fp64."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def step_function(
    variant: str, model: SiameseModel, batch: TrainBatch, params: dict[str, torch.nn.Parameter],
    amp_dtype: torch.dtype = torch.float32, progress: float = PROGRESS,
) -> Callable[[], dict[str, torch.Tensor]]:
    """A function running one forward + backward of `variant` (gradients reset first)."""
    unet, controlnet, kwargs = model.unet, model.controlnet, batch.kwargs()
    device = model.device

    def backward(loss: torch.Tensor) -> None:
        loss.backward()

    def step() -> dict[str, torch.Tensor]:
        for p in params.values():
            p.grad = None
        with autocast(device, amp_dtype):
            if variant == "ours":
                return siamese_losses(unet, controlnet, progress=progress, backward=backward, **kwargs)
            if variant == "naive":
                losses = naive_siamese_losses(unet, controlnet, progress=progress, **kwargs)
                losses["loss"].backward()
                return losses
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got '{variant}'")

    return step


def gradients(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}


def grad_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(largest |a - b| over all parameters, largest |b|) -- the second gives the scale."""
    diff = max(float((a[n].double() - b[n].double()).abs().max()) for n in a)
    scale = max(float(b[n].abs().max()) for n in b)
    return diff, scale


def compare_steps(
    model: SiameseModel, batch_size: int, device: torch.device, repeats: int, variants: tuple[str, ...] = ("ours", "naive"),
    amp_dtype: torch.dtype = torch.float32, channels_last: bool = True, compile: bool = False, seed: int = 0,
    regularised: int | None = None, gradient_checkpointing: bool = False, time_optimizer: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Time the variants interleaved on the same model and batch; compare each one's gradients with the
    naive one's. Returns step times (median, all repeats), speedups and gradient differences."""
    params = prepare_networks(model, device, channels_last=channels_last, compile=compile,
                              gradient_checkpointing=gradient_checkpointing, train=True)
    batch = train_batch(model, batch_size, seed, channels_last, regularised)
    steps = {v: step_function(v, model, batch, params, amp_dtype) for v in variants}

    # warm-up call of each variant, which also gives the gradients to compare: the naive one runs last
    # and is compared in place, so at most one copy of the gradients is kept (3.5 GB for SD1.5)
    grads, losses, diffs = {}, {}, {}
    for v in sorted(steps, key=lambda v: v == "naive"):
        log(f"  warm-up {v}")
        out = steps[v]()
        losses[v] = {k: round(float(x.detach()), 6) for k, x in out.items()}
        if v == "naive":
            live = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
            diffs = {u: grad_diff(g, live) for u, g in grads.items()}
            grads.clear()
        elif "naive" in variants:
            grads[v] = gradients(params)
    log(f"  timing {', '.join(variants)} interleaved, {repeats} repeats")
    timings = interleaved(steps, repeats, device)

    opt_timings = None
    if time_optimizer:  # the optimiser step, the same for both objectives (state allocated by a first call)
        opt = torch.optim.AdamW(list(params.values()), lr=1e-5)
        steps["ours"]()
        opt.step()
        opt_timings = interleaved({"adamw": opt.step}, max(1, repeats), device)
        del opt

    result = {
        "batch": batch.describe(), "progress": PROGRESS, "repeats": repeats,
        "gradient_checkpointing": gradient_checkpointing,
        "unet_parameters": count_parameters(model.unet), "controlnet_parameters": count_parameters(model.controlnet),
        "dhi_parameters": count_parameters(model.controlnet.controlnet_cond_embedding),
        "trainable_parameters": sum(p.numel() for p in params.values()),
        "step_s": {v: round(timings.median(v), 4) for v in variants},
        "optimizer_step_s": round(opt_timings.median("adamw"), 4) if opt_timings else None,
        "timings": timings.summary(), "losses": losses,
    }
    for v, (diff, scale) in diffs.items():
        result[f"{v}_speedup"] = round(timings.ratio("naive", v), 3)
        result[f"{v}_speedup_cpu_time"] = round(timings.ratio("naive", v, "cpu"), 3)
        result[f"{v}_max_grad_diff"] = diff
        result["max_grad_abs"] = scale
    return result


def speedup_by_regularised_samples(model: SiameseModel, batch_size: int, device: torch.device, repeats: int,
                                   counts: tuple[int, ...] = (0, 1, 2), log: Callable[[str], None] = lambda s: None,
                                   ) -> dict:
    """Speedup of ours over naive when k samples of the batch have t <= 200 (the naive objective runs
    the regularisation pass on the whole batch as soon as k >= 1; ours on the k samples)."""
    out = {}
    for k in counts:
        log(f"  {k} samples with t <= 200")
        r = compare_steps(model, batch_size, device, repeats, ("ours", "naive"), regularised=k)
        out[str(k)] = {"step_s": r["step_s"], "speedup": r["ours_speedup"],
                       "speedup_cpu_time": r["ours_speedup_cpu_time"], "max_grad_diff": r["ours_max_grad_diff"]}
    return out


def deepcopy_seconds(model: SiameseModel, repeats: int = 3) -> list[float]:
    """Wall time of the naive objective's copies (frozen ControlNet copy + UNet copy), each repeat."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        copies = copy.deepcopy(model.controlnet).requires_grad_(False), copy.deepcopy(model.unet)
        times.append(round(time.perf_counter() - t0, 3))
        del copies
    return times


def float64_parity(model: SiameseModel, batch_size: int = 4, seed: int = 0) -> dict:
    """Gradient parity of ours with the naive objective in float64 (CPU)."""
    device = torch.device("cpu")
    params = prepare_networks(model, device, dtype=torch.float64, channels_last=False, train=True)
    batch = train_batch(model, batch_size, seed, channels_last=False)
    grads = {}
    for v in VARIANTS:
        step_function(v, model, batch, params)()
        grads[v] = gradients(params)
    ours, scale = grad_diff(grads["ours"], grads["naive"])
    return {"resolution": model.config.resolution, "batch": batch_size, "max_grad_diff": ours,
            "max_grad_abs": scale}


def component_times(model: SiameseModel, batch_size: int, device: torch.device, repeats: int = 2,
                    channels_last: bool = True, seed: int = 0) -> dict:
    """Where our step's time goes: each part of `siamese_losses` timed alone (forward + the backward it
    needs), on the same batch. The parts add up to about one step; the naive objective runs the DHI and
    the ControlNet on 3B samples with a graph and B without (ours: the DHI on 2B, the ControlNet on 2B + k),
    the UNet encoder 3B (ours: B + k) and the decoder 3B with weight gradients (ours: B with, B without,
    k with)."""
    from torch.func import functional_call

    from siamese.networks import UNetDecoder, controlnet_residuals, unet_decode, unet_encode
    from siamese.objective import REG_T_MAX, q_sample

    from .timing import interleaved

    params = prepare_networks(model, device, channels_last=channels_last, train=True)
    b = train_batch(model, batch_size, seed, channels_last)
    unet, cn = model.unet, model.controlnet
    x_t = q_sample(b.x0, b.t, b.noise, b.alphas_cumprod)
    hints = torch.cat([b.mask_hint, b.image_hint])
    sel = (b.t <= REG_T_MAX).nonzero().squeeze(1)
    with torch.no_grad():
        hint_emb = cn.embed_hint(hints)
        enc = unet_encode(unet, x_t, b.t, b.prompt_embeds)
        down, mid = controlnet_residuals(cn, x_t, b.t, b.prompt_embeds, hint_emb[:batch_size])

    def leaf(x):
        return x.detach().requires_grad_()

    def dhi():
        cn.embed_hint(hints).mean().backward()

    def controlnet():
        d, m = controlnet_residuals(cn, torch.cat([x_t, x_t]), torch.cat([b.t, b.t]),
                                    torch.cat([b.prompt_embeds, b.prompt_embeds]), leaf(hint_emb))
        (sum(r.mean() for r in d) + m.mean()).backward()

    def encoder():
        with torch.no_grad():
            unet_encode(unet, x_t, b.t, b.prompt_embeds)

    def decoder_mask():
        unet_decode(unet, enc, b.prompt_embeds, [leaf(r) for r in down], leaf(mid)).mean().backward()

    def decoder_image():
        frozen = {n: p.detach() for n, p in UNetDecoder(unet).named_parameters()}
        functional_call(UNetDecoder(unet), frozen, (enc, b.prompt_embeds, [leaf(r) for r in down],
                                                    leaf(mid))).mean().backward()

    def regularisation():
        e = unet_encode(unet, x_t[sel], b.t[sel], b.prompt_embeds[sel])
        d, m = controlnet_residuals(cn, x_t[sel], b.t[sel], b.prompt_embeds[sel], leaf(hint_emb[:batch_size][sel]))
        unet_decode(unet, e, b.prompt_embeds[sel], d, m).mean().backward()

    parts = {"dhi_2B": dhi, "controlnet_2B": controlnet, "unet_encoder_B_no_grad": encoder,
             "decoder_mask_B": decoder_mask, "decoder_image_B_input_grad_only": decoder_image,
             f"regularisation_{sel.numel()}_samples": regularisation,
             "ours_step": step_function("ours", model, b, params)}
    for run in parts.values():
        run()
    t = interleaved(parts, repeats, device)
    for p in params.values():
        p.grad = None
    seconds = {k: round(t.median(k), 4) for k in parts}
    total = seconds.pop("ours_step")
    return {"batch": batch_size, "seconds": seconds, "sum_of_parts_s": round(sum(seconds.values()), 4),
            "ours_step_s": total, "share": {k: round(v / total, 3) for k, v in seconds.items()}}
