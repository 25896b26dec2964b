"""The evaluation report's outputs: report.json with sample grids, and the plain-text table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .curation import format_curation
from .data import Pair, read_image
from .export import atomic_write
from .sampling import describe_mask

if TYPE_CHECKING:
    from .evaluate import _GeneratedSets

logger = logging.getLogger(__name__)

__all__ = ["format_report", "write_output"]


# -- output ---------------------------------------------------------------------------------------
def _grid(rows: list[list[np.ndarray]], size: int, gap: int = 4) -> np.ndarray:
    """Rows of RGB or {0, 255} gray images -> one RGB grid image, each tile size x size."""
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (size + gap) - gap, cols * (size + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            tile = cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA)
            if tile.ndim == 2:
                tile = np.repeat(tile[..., None], 3, axis=2)
            grid[r * (size + gap):r * (size + gap) + size, c * (size + gap):c * (size + gap) + size] = tile
    return grid


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: could not encode the image")
    atomic_write(path, buf.tobytes())


def write_output(out: Path, report: dict, test_pairs: list[Pair], generated: _GeneratedSets, size: int) -> None:
    """report.json, and sample grids: fidelity.png (mask | generated | real), diversity.png (mask | images),
    synthetic.png (masks above their images; odd columns from augmented masks)."""
    out.mkdir(parents=True, exist_ok=True)
    shown = [(pair, item) for pair, item in zip(test_pairs, generated.fidelity) if item is not None][:4]
    rows = [[item.mask, item.image, read_image(pair.image)] for pair, item in shown]
    if rows:
        _write_png(out / "fidelity.png", _grid(rows, size))
    if generated.diversity:
        rows = [[group[0].mask] + [item.image for item in group] for group in generated.diversity]
        _write_png(out / "diversity.png", _grid(rows, size))
    if generated.synthetic:
        shown = generated.synthetic[:6]
        _write_png(out / "synthetic.png", _grid([[i.mask for i in shown], [i.image for i in shown]], size))
    atomic_write(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    logger.info("wrote report.json and sample grids to %s", out)


# -- text report ----------------------------------------------------------------------------------
def _pm(d: dict, digits: int = 3) -> str:
    return f"{d['mean']:.{digits}f} +- {d['std']:.{digits}f}"


def _pm_kid(d: dict) -> str:
    std = d["std"] if d["std"] > 1e-9 * max(1.0, abs(d["mean"])) else 0.0  # one subset: rounding noise only
    return f"{d['mean']:.4g} +- {std:.2g}"


def format_report(report: dict) -> str:
    """The report as a readable plain-text table."""
    s, m, p = report["settings"], report["model"], report["pairs"]
    fid, down, real, div = report["fidelity"], report["downstream"], report["realism"], report["diversity"]
    lines = [
        f"Siamese-Diffusion evaluation of {m['name'] or '(unnamed)'} [{m['fingerprint']}] ({s['model']})",
        f"data {report['data']}: {p['total']} pairs, {p['train']} train, {p['held_out']} held out, "
        f"{p['test']} evaluated (split seed {s['seed']})",
        f"sampling: {s['scheduler']}, {s['steps']} steps, guidance {s['guidance_scale']}, "
        f"control scale {describe_mask(s.get('control_scale', 1.0), s.get('control_end', 1.0))}, "
        f"autoguidance {s.get('autoguidance', 1.0):g}, {s['model_resolution']}x{s['model_resolution']}",
        f"segmentation network: {report['segmentation_network']}",
        "",
        "1. Mask fidelity: the real-trained network segments held-out images; Dice/IoU vs their masks",
        f"   {'images':<40}{'Dice':>8}{'IoU':>8}",
    ]
    for key, label in (("real", "real held-out (ceiling)"), ("generated", "generated from held-out masks"),
                       ("flat_painting", "flat painting of the masks (control)")):
        lines.append(f"   {label:<40}{fid[key]['dice']:>8.3f}{fid[key]['iou']:>8.3f}")
    lines += [
        "",
        f"2. Downstream benefit: tested on {down['test_pairs']} held-out real pairs, {down['seeds']} seed(s), "
        "mean +- std",
        f"   {'trained on':<34}{'mDice':>16}{'mIoU':>18}",
        f"   {'real (' + str(down['num_real']) + ')':<34}{_pm(down['real']['dice']):>16}{_pm(down['real']['iou']):>18}",
        f"   {'real + synthetic (' + str(down['num_real']) + ' + ' + str(down['num_synthetic']) + ')':<34}"
        f"{_pm(down['real+synthetic']['dice']):>16}{_pm(down['real+synthetic']['iou']):>18}",
        f"   {'difference (paired by seed)':<34}{_pm(down['difference']['dice']):>16}"
        f"{_pm(down['difference']['iou']):>18}",
        "",
        "3. Realism: KID against the real held-out images (lower is better; ~0 = same distribution)",
        f"   {'images':<34}{'seg-net features':>22}{'colour/texture':>22}",
    ]
    for key, label in (("real_train", "real train (reference)"), ("generated", "generated"),
                       ("flat_painting", "flat painting (control)")):
        kids = (_pm_kid(real["kid_features"][key]), _pm_kid(real["kid_statistics"][key]))
        lines.append(f"   {label:<34}{kids[0]:>22}{kids[1]:>22}")
    shown = ("brightness", "saturation", "edge_energy", "fine_detail", "highlights", "dark")
    lines += ["", f"   {'mean statistics':<22}" + "".join(f"{k:>13}" for k in shown)]
    for key, label in (("real_test", "real held-out"), ("real_train", "real train"), ("generated", "generated"),
                       ("flat_painting", "flat painting")):
        lines.append(f"   {label:<22}" + "".join(f"{real['statistics'][key][k]:>13.4f}" for k in shown))
    lines += ["", f"4. Diversity: mean pairwise distance, {div['masks']} masks x {div['images_per_mask']} images",
              f"   {'images':<34}{'pixel L1':>10}{'1-SSIM':>10}{'features':>10}"]
    for key, label in (("generated_same_mask", "generated, same mask"),
                       ("real_different_images", f"real, different images ({div.get('reference_images', 0)})")):
        if key in div:
            d = div[key]
            lines.append(f"   {label:<34}" + "".join(f"{d[k]:>10.4f}" for k in ("pixel_l1", "one_minus_ssim",
                                                                               "feature_distance")))
    use = report.get("mask_use")
    if use:
        lines += ["", f"5. Mask use: noise-prediction error of the generator on the {use['pairs']} held-out pairs, "
                      f"t in {tuple(use['timesteps'])}",
                  f"   own mask {use['mse_own_mask']:.5f}, another pair's mask {use['mse_other_mask']:.5f}, "
                  f"no control {use['mse_no_control']:.5f}: the right mask lowers it by {use['gain_percent']:.2f}%"]
    pix = report.get("pixels")
    if pix:
        ratio, b, res = pix["block_edge_ratio"], pix["block"], pix["resolution"]
        lines += ["", f"6. Pixels, at the model resolution {res}x{res}: patch-grid artefacts and codec reconstruction",
                  f"   block-edge ratio: gradient across the {b}x{b} patch-grid borders / gradient inside the patches "
                  "(real images about 1)",
                  f"   {'images':<40}{'block-edge ratio':>18}"]
        for key, label in (("real", f"real held-out (reference, {pix['real_images']})"),
                           ("generated", f"generated ({pix['generated_images']})"),
                           ("reconstructed", "codec reconstructions of the real")):
            lines.append(f"   {label:<40}{ratio[key]:>18.3f}")
        lines.append(f"   codec reconstruction PSNR {pix['codec_psnr_db']:.2f} dB")
    lines += format_curation(report)
    t = report["timings"]
    lines += ["", f"time: {t['total']:.0f} s in all; generation {t['generation']:.0f} s "
                  f"({report['generated_images']} images, {report['seconds_per_image']:.2f} s each), "
                  f"segmentation training {t['segmentation_training']:.0f} s"]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
