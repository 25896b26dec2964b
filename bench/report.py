"""The human-readable table of a benchmark result (the JSON object of `bench.run`)."""

from __future__ import annotations

import os

from siamese.sampling import describe_mask

__all__ = ["table"]

MIB = 2**20


def _mib(value) -> str:
    return "-" if value is None else f"{value / MIB:,.0f} MiB"


def _s(value) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _rows(title: str, rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in rows) if rows else 0
    return [f"\n{title}", *(f"  {k:<{width}}  {v}" for k, v in rows)]


def _train_rows(r: dict) -> list[tuple[str, str]]:
    b = r["batch"]
    rows = [
        ("config", f"UNet {r['unet_parameters'] / 1e6:.1f}M, ControlNet {r['controlnet_parameters'] / 1e6:.1f}M "
                   f"(DHI {r['dhi_parameters'] / 1e6:.2f}M), trainable {r['trainable_parameters'] / 1e6:.1f}M"),
        ("batch", f"latents {b['x0']}, hints {b['hints']}, {b['samples_t_le_200']} samples with t <= 200, "
                  f"progress {r['progress']}"),
    ]
    for v, t in r["step_s"].items():
        rows.append((f"step time {v}", _s(t)))
    for v in ("ours",):
        if f"{v}_speedup" in r:
            rows.append((f"speedup {v} (wall / cpu time)",
                         f"{_x(r[f'{v}_speedup'])} / {_x(r[f'{v}_speedup_cpu_time'])}"))
            rows.append((f"max grad diff {v}", f"{r[f'{v}_max_grad_diff']:.2e} (largest |grad| "
                                               f"{r['max_grad_abs']:.2e})"))
    rows.append(("optimizer step (AdamW)", _s(r["optimizer_step_s"])))
    return rows


def table(res: dict) -> str:
    lines = [f"Siamese-Diffusion benchmarks ({res['mode']} mode): {res['device']} {res.get('device_name', '')}, "
             f"{res['threads']} threads, torch {res['torch']}, diffusers {res['diffusers']}, {res['dtype']}, "
             f"compile {res['compile']}, load average {res.get('load_average_start')} -> "
             f"{res.get('load_average_end')}"]
    if "train" in res:
        lines += _rows(f"Training step, forward + backward, preset {res['train']['preset']['name']} "
                       f"({res['training_precision']})", _train_rows(res["train"]))
        f64 = res["train_float64"]
        lines.append(f"  float64 parity ({f64['resolution']}x{f64['resolution']}, batch {f64['batch']}): max grad "
                     f"diff ours {f64['max_grad_diff']:.1e}")
    if "train_mid" in res:
        lines += _rows(f"Training step, preset mid {res['train_mid']['preset']}", _train_rows(res["train_mid"]))
    if "train_sd15_architecture" in res:
        a = res["train_sd15_architecture"]
        for k in (0, 1):
            lines += _rows(f"Training step, Stable Diffusion 1.5 architecture (random weights), gradient "
                           f"checkpointing, {k} samples with t <= 200", _train_rows(a[f"regularised_{k}"]))
        if "deepcopy_s" in a:
            lines.append(f"  the naive objective's deep copies alone: {', '.join(_s(t) for t in a['deepcopy_s'])}")
    if "train_speedup_by_regularised_samples" in res:
        rows = [(f"{k} samples with t <= 200", f"ours {_s(v['step_s']['ours'])}, naive {_s(v['step_s']['naive'])}: "
                 f"{_x(v['speedup'])} (cpu time {_x(v['speedup_cpu_time'])})")
                for k, v in res["train_speedup_by_regularised_samples"].items()]
        lines += _rows("Training speedup against the number of regularised samples (same batch otherwise)", rows)
    if "train_profile" in res:
        p = res["train_profile"]
        rows = [(k, f"{_s(v)}  {100 * p['share'][k]:.0f}%") for k, v in p["seconds"].items()]
        rows += [("sum of parts", _s(p["sum_of_parts_s"])), ("our whole step", _s(p["ours_step_s"]))]
        lines += _rows(f"Where our step's time goes (batch {p['batch']}; each part timed alone)", rows)
    memory = {k: res[k] for k in res if k.startswith("train_memory") and isinstance(res[k], dict)}
    if "memory" in res.get("train_sd15_architecture", {}):
        memory["sd15 architecture, gradient checkpointing"] = res["train_sd15_architecture"]["memory"]
    for key, m in memory.items():
        rows = [(f"peak {v}", _mib(d.get("peak_bytes")) if "error" not in d else d["error"][:110])
                for v, d in m["variants"].items()]
        rows += [(f"ratio {k.removesuffix('_ratio')} / naive", f"{v}") for k, v in m.items() if k.endswith("_ratio")]
        method = next((d["method"] for d in m["variants"].values() if "method" in d), "")
        lines += _rows(f"Peak memory of one step above the model ({key}, batch {m['batch']}, {method})", rows)
    if "sample" in res:
        s = res["sample"]
        rows = [(f"{k} images/s", f"{v:.3f}  ({s['seconds'][k]:.2f} s per batch)")
                for k, v in s["images_per_second"].items()]
        rows.append(("speedup ours / diffusers loop (wall / cpu)", f"{_x(s['speedup'])} / {_x(s['speedup_cpu_time'])}"))
        rows.append(("max pixel diff (images in [0, 1])", f"{s['max_pixel_diff']:.2e}"))
        if "speedup_vs_pipeline" in s:
            rows.append(("speedup ours / StableDiffusionControlNetPipeline", _x(s["speedup_vs_pipeline"])))
            rows.append(("max pixel diff vs pipeline", f"{s['max_pixel_diff_vs_pipeline']:.2e}"))
        lines += _rows(f"Sampling, batch {s['batch']}, {s['resolution']}x{s['resolution']}, {s['scheduler']}, "
                       f"{s['steps']} steps, guidance {s['guidance_scale']}, "
                       f"control scale {describe_mask(s.get('control_scale', 1.0), s.get('control_end', 1.0))}, "
                       f"no autoguidance (the loop has none) ({res['sample_model']})", rows)
    if "sample_memory_format" in res:
        c = res["sample_memory_format"]
        rows = [(k, _s(v)) for k, v in c["seconds"].items()]
        rows += [("ours: channels_last over contiguous", _x(c["ours_channels_last_speedup"])),
                 ("ours / loop, contiguous (as the app)", _x(c["speedup_contiguous"])),
                 ("ours / loop, channels_last", _x(c["speedup_channels_last"]))]
        lines += _rows(f"Memory format of the networks when sampling (batch {c['batch']})", rows)
    if "images_per_second" in res:
        a = res["app_defaults"]
        rows = [(f"batch {b}", f"{v:.3f} images/s") for b, v in res["images_per_second"].items()]
        rows.append((f"seconds per image (batch {a['batch']}, as the app)", _s(res["seconds_per_image_app_defaults"])))
        if "autoguidance_cost" in res:
            c = res["autoguidance_cost"]
            rows.append((f"autoguidance {c['autoguidance']:g} / none (batch {c['batch']}, interleaved)",
                         f"{_x(c['ratio'])}  ({_s(c['seconds_per_image_with'])} / {_s(c['seconds_per_image_without'])}"
                         " per image)"))
        if "frame_mode_cost" in res:
            c = res["frame_mode_cost"]
            rows.append((f"painting into a {c['frame_size'][1]}x{c['frame_size'][0]} frame / whole images (batch "
                         f"{c['batch']})", f"{_x(c['ratio'])}  ({_s(c['seconds_per_image_frame'])} / "
                         f"{_s(c['seconds_per_image_whole'])} per image)"))
        lines += _rows(f"Images per second, app defaults ({a['scheduler']}, {a['steps']} steps, guidance "
                       f"{a['guidance_scale']}, control scale "
                       f"{describe_mask(a.get('control_scale', 1.0), a.get('control_end', 1.0))}, "
                       f"autoguidance {a.get('autoguidance', 1.0):g}, "
                       f"{a['resolution']}x{a['resolution']}; {a['model']})", rows)
    if "presets" in res:
        p, quality = res["presets"], res.get("presets_quality", {})
        rows = []
        for name, settings in p["settings"].items():
            speed = (f"{_s(p['seconds_per_image'][name])} per image" if name == "today" else
                     f"{_s(p['seconds_per_image'][name])} per image, {_x(p['speedup'][name])} faster than today "
                     f"(cpu time {_x(p['speedup_cpu_time'][name])})")
            q = quality.get(name)
            if q:
                speed += (f"; colour/texture KID {q['kid_colour']:.2f} +- {q['kid_colour_std']:.2f}, feature KID "
                          f"{q['kid_features']:.3f} +- {q['kid_features_std']:.3f}, fidelity {q['fidelity_dice']:.3f}")
            rows.append((f"{name}: {settings['scheduler']} {settings['steps']} steps, cache "
                         f"{settings.get('cache_interval', 1)}, {settings.get('precision', 'float32')}", speed))
        if "batch_images_per_hour" in res:
            b = res["batch_images_per_hour"]
            rows.append((f"Batch path, default preset ({'scored' if b['scored'] else 'unscored'}, "
                         f"{b['num_images']} per mask)", f"{b['images_per_hour']:,} pairs per hour "
                                                          f"({_s(b['seconds_per_pair'])} per pair)"))
        n = next(iter(quality.values()), {}).get("images")
        lines += _rows(f"Sampling presets against today's sampler (batch {p['batch']}, interleaved"
                       f"{f'; quality on {n} held-out masks' if n else ''})", rows)
    if "scaling" in res:
        rows = [(f"{r['resolution']}x{r['resolution']} batch {r['batch']}",
                 r["error"] if r.get("error") else f"{_s(r['step_s'])}   {_mib(r['peak_bytes'])}")
                for r in res["scaling"]]
        lines += _rows("Scaling of our training step (time, peak memory above the model)", rows)
    if "sd15" in res:
        lines += _rows("Stable Diffusion 1.5", [(k, str(v)[:160]) for k, v in res["sd15"].items()])
    est = res.get("sd15_memory_estimate", {})
    if "total_gib" in est:
        lines += _rows(f"SD1.5 training memory ESTIMATE (batch {est['batch']}, {est['resolution']}x{est['resolution']},"
                       " fp16 autocast, gradient checkpointing; not measured)",
                       [(k, f"{v} GiB") for k, v in est["gib"].items() if not isinstance(v, dict)]
                       + [(f"total with {k}", f"{v} GiB") for k, v in est["total_gib"].items()])
    load, cores = res.get("load_average_start"), os.cpu_count() or 1
    if load is not None and load >= cores and res.get("threads", 1) > 1:
        lines.append(f"\nNOTE: the machine was busy (load average {load} on {cores} cores): with {res['threads']} "
                     "threads our many small operations wait on the slower thread more than the naive objective's "
                     "large ones, and the speedups fall (training step 1.31x at 2 threads, 1.79x at 1 thread under "
                     "the same load: docs/PERFORMANCE.md); rerun quiet or with --threads 1")
    rows = [(k, f"{'-' if t['value'] is None else t['value']}  (target {t['target']}: "
                f"{'-' if t['met'] is None else 'met' if t['met'] else 'MISSED'})") for k, t in res["targets"].items()]
    lines += _rows(f"Targets (elapsed {res['elapsed_s']} s)", rows)
    return "\n".join(lines)
