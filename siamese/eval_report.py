"""The evaluation report's outputs: report.json with sample grids, and the plain-text table.

Below the evaluation and the model card: `evaluate` makes the report (a dict, saved as evaluation.json) and writes
it with `write_output`; the card of a model folder shows `format_report` of its evaluation.json. Nothing here
measures anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .data import Pair, read_image
from .files import atomic_write
from .params import Generated, describe_mask

logger = logging.getLogger(__name__)

__all__ = ["GeneratedSets", "format_report", "format_curation", "format_frames", "write_output", "write_grid"]


@dataclass
class GeneratedSets:
    """What `evaluate` generates (its step 4), and what it cost."""

    fidelity: list[Generated | None]  # one per test pair, None where its mask was skipped
    diversity: list[list[Generated]]  # several images for each of the first few test masks
    synthetic: list[Generated]  # the synthetic training pairs
    # each synthetic pair's train pair index, mask as used (augmented or not, the file's shape) and seed
    synthetic_masks: list[tuple[int, np.ndarray, int]] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0
    skipped: int = 0


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


def write_grid(path: Path, rows: list[list[np.ndarray]], size: int) -> None:
    """A grid of RGB or {0, 255} gray images (rows of tiles, each size x size) as a PNG."""
    _write_png(path, _grid(rows, size))


def write_output(out: Path, report: dict, test_pairs: list[Pair], generated: GeneratedSets, size: int) -> None:
    """report.json, and sample grids: fidelity.png (real | mask | generated, 8 held-out pairs), diversity.png
    (mask | images), synthetic.png (masks above their images; odd columns from augmented masks)."""
    out.mkdir(parents=True, exist_ok=True)
    shown = [(pair, item) for pair, item in zip(test_pairs, generated.fidelity) if item is not None][:8]
    rows = [[read_image(pair.image), item.mask, item.image] for pair, item in shown]
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
        f"autoguidance {s.get('autoguidance', 1.0):g}, {s['model_resolution']}x{s['model_resolution']}"
        + (f", cache interval {s['cache_interval']}" if s.get("cache_interval", 1) != 1 else "")
        + (f", {s['precision']}" if s.get("precision", "float32") != "float32" else ""),
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
    copy = report.get("memorisation")
    if copy:
        lines += ["", "   copying: distance to the nearest training image (seg-net features), median; generated / held-out "
                      "real below about 0.9 means the model copies its training images",
                  f"   generated {copy['generated_median']:.4f}, held-out real {copy['held_out_median']:.4f}: ratio "
                  f"{copy['ratio']:.3f}; {copy['closer_than_held_out']:.0%} of the generated images are nearer a "
                  "training image than any held-out real image is"]
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
    lines += format_frames(report)
    t = report["timings"]
    lines += ["", f"time: {t['total']:.0f} s in all; generation {t['generation']:.0f} s "
                  f"({report['generated_images']} images, {report['seconds_per_image']:.2f} s each), "
                  f"segmentation training {t['segmentation_training']:.0f} s"]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def _pm_signed(d: dict) -> str:
    return f"{d['mean']:+.3f} +- {d['std']:.3f}"


def format_curation(report: dict) -> list[str]:
    """The curation section of the text report (no lines when it was not run)."""
    cur = report.get("curation")
    if not cur:
        return []
    lines = ["", f"7. Curation: the fidelity scorer ({report.get('fidelity_scorer', '')})"]
    if not cur.get("pool"):
        return lines + [f"   {cur.get('note', '')}"]
    f = cur["fidelity"]
    lines.append(f"   fidelity of the {cur['pool']} synthetic training pairs: mean {f['mean']:.3f}, median "
                 f"{f['median']:.3f}, quartiles {f['quartiles'][0]:.3f}-{f['quartiles'][1]:.3f}")
    lines.append("   acceptance: " + ", ".join(f">= {a['threshold']:g}: {a['accepted']} ({100 * a['rate']:.0f}%)"
                                                for a in cur["acceptance"]))
    if cur["comparison"]:
        lines += [f"   downstream mDice, real + n synthetic pairs, {cur['seeds']} seed(s), paired by seed:",
                  f"   {'threshold':>9}{'n':>6}{'unfiltered':>12}{'filtered':>12}{'filtered - unfiltered':>24}"]
    for row in cur["comparison"]:
        if "note" in row:
            lines.append(f"   {row['threshold']:>9g}{row['pairs']:>6}   {row['note']}")
        else:
            lines.append(f"   {row['threshold']:>9g}{row['pairs']:>6}{row['unfiltered']['dice']['mean']:>12.3f}"
                         f"{row['filtered']['dice']['mean']:>12.3f}{_pm_signed(row['difference']['dice']):>24}")
    return lines


def format_frames(report: dict) -> list[str]:
    """The inpainted pairs' section of the text report (`evaluate --frames`; no lines when it was not run)."""
    fr = report.get("inpainted_pairs")
    if not fr:
        return []
    cols = ("real_train", "whole_image", "inpainted")
    down, seam, fid = fr["downstream"], fr["seam"], fr["fidelity"]
    lines = ["", f"8. Inpainted pairs: {fr['pairs']} held-out masks, each painted into another held-out frame "
                 f"(margin {fr['margin']} px; the pair's mask is the union with the frame's own lesion)",
             f"   {'measure':<44}{'real (reference)':>18}{'whole-image':>18}{'inpainted':>18}"]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"   {label:<44}" + "".join(f"{c:>18}" for c in cells))

    for part, name in (("whole_frames", "whole frames"), ("lesion_crops", "crops around the lesion")):
        for key, what in (("kid_statistics", "colour/texture"), ("kid_features", "feature")):
            row(f"{what} KID, {name}", [_pm_kid(fr[part][key][c]) for c in cols])
    row("seam: edge / inside gradient at the region", [f"{seam[k]['edge_ratio']:.3f}" for k in
                                                      ("real", "whole_image", "inpainted")])
    row("seam / the real lesions' edges", [f"{seam[k]['of_real']:.3f}" for k in ("real", "whole_image", "inpainted")])
    row("fidelity Dice, the new lesion's region", [f"{fid[k]['dice']:.3f}" for k in ("real", "whole_image",
                                                                                    "inpainted")])
    row("fidelity Dice / real ceiling", [f"{fid[k]['of_ceiling']:.3f}" for k in ("real", "whole_image", "inpainted")])
    row("max pixel difference outside the region", ["-", "-", str(fr["outside_max_difference"])])
    row(f"downstream mDice, real + synthetic ({down['seeds']} seeds)",
        [_pm(down["real"]["dice"]), _pm(down["real+whole_image"]["dice"]), _pm(down["real+inpainted"]["dice"])])
    row("  minus real, paired by seed", ["-", _pm_signed(down["difference_whole_image"]["dice"]),
                                         _pm_signed(down["difference_inpainted"]["dice"])])
    lines.append(f"   real: {down['num_real']} pairs; synthetic: {down['num_whole_image']} whole-image, "
                 f"{down['num_inpainted']} inpainted (train masks into train frames); inpainted minus whole-image, "
                 f"paired by seed: mDice {_pm_signed(down['inpainted_minus_whole_image']['dice'])}, mIoU "
                 f"{_pm_signed(down['inpainted_minus_whole_image']['iou'])}")
    lines += [f"   note: {n}" for n in fr["notes"]]
    return lines
