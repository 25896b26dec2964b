"""Does curation pay? The evaluation's curation section (`evaluate --curation`).

The synthetic training pairs that `evaluate` generates (min(#train, max_synthetic) pairs from random train
masks, every other one augmented) are the pool. The fidelity scorer (`fidelity`: the model's own, else the
evaluation's instrument) scores every pooled pair; at each threshold t the accepted pairs are those scoring
at least t, and the acceptance rate is their share of the pool. For each compared threshold, with n pairs
accepted, two segmentation networks per seed are trained with the same seed (same initial weights, same
batch order) on the real train pairs plus

- unfiltered: the first n pairs of the pool (the pool is in random order: a random sample of n), or
- filtered: the n accepted pairs,

and tested on the held-out real pairs: the paired difference filtered - unfiltered is what curation buys at
the same number of synthetic pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .fidelity import FidelityScorer, ScorerConfig, load_scorer, save_scorer, scorer_summary
from .params import Generated
from .segnet import dice_iou, mean_std, predict_masks, train_segnet
from .train_config import same_split

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_THRESHOLDS", "validate_curation", "evaluation_scorer", "measure_curation"]

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8)


def validate_curation(thresholds: Sequence[float], compare: Sequence[float] | None) -> None:
    """Thresholds are fractions in [0, 1]; compared thresholds are among them."""
    for t in (*thresholds, *(compare or ())):
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise ValueError(f"curation thresholds must be fidelity scores between 0 and 1, got {t!r}")
    if not thresholds:
        raise ValueError("curation needs at least one threshold")


def evaluation_scorer(model_path: str | Path, net, config, trained: dict | None, real_dice: float,
                      n_test: int) -> tuple[FidelityScorer, str]:
    """The scorer of the curation section: the model's own (segmenter/); without one, the evaluation's
    instrument `net`, which is also saved as the model's scorer when it trained on exactly the generator's
    training pairs (the model's train_config.json names this data folder with this split held out) and
    `config.save_scorer` is on. Returns the scorer and a note saying which it is."""
    own = load_scorer(model_path)
    if own is not None:
        return own, f"the model's own scorer (segmenter/: {scorer_summary(own)})"
    scorer_config = ScorerConfig(resolution=int(config.resolution), channels=tuple(config.seg_channels),
                                 steps=int(config.seg_steps), batch_size=int(config.seg_batch_size),
                                 lr=float(config.seg_lr), seed=int(config.seed), data=str(config.data),
                                 holdout=float(config.test_fraction), holdout_seed=int(config.seed),
                                 held_out_pairs=n_test, held_out_dice=float(real_dice))
    scorer = FidelityScorer(net, scorer_config)
    if config.save_scorer and same_split(trained, config.data, config.test_fraction, config.seed) \
            and Path(model_path).is_dir():
        save_scorer(scorer, model_path)
        return scorer, "the evaluation's network, saved as the model's scorer (it had none)"
    return scorer, ("the evaluation's network (the model has no scorer; it is saved as one only when the "
                    "evaluation's split is the one the model was trained with: else run train-scorer)")


def measure_curation(
    scorer: FidelityScorer, pool: list[Generated], pool_seg: tuple[np.ndarray, np.ndarray],
    real: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], real_dice: Sequence[float],
    thresholds: Sequence[float], compare: Sequence[float] | None, seeds: int, seed: int, seg_kw: dict,
) -> dict:
    """The curation section (module docstring). pool: the synthetic pairs as generated; pool_seg: the same
    pairs at the segmentation resolution, images (P, R, R, 3) uint8 and masks (P, R, R) {0, 1}; real and
    test: (images, masks) likewise; real_dice: the real-only networks' test Dice, one per seed."""
    if not pool:
        return {"pool": 0, "note": "no synthetic pairs were generated: nothing to curate"}
    scores = scorer.score(np.stack([g.image for g in pool]), np.stack([g.mask for g in pool]))
    P = len(pool)
    result: dict = {
        "pool": P, "seeds": seeds,
        "fidelity": {"mean": float(scores.mean()), "median": float(np.median(scores)),
                     "quartiles": [float(q) for q in np.quantile(scores, (0.25, 0.75))]},
        "acceptance": [{"threshold": float(t), "accepted": int((scores >= t).sum()),
                        "rate": float((scores >= t).mean())} for t in thresholds],
        "comparison": [],
    }
    for t in (thresholds if compare is None else compare):
        accepted = np.flatnonzero(scores >= t)
        n = len(accepted)
        row: dict = {"threshold": float(t), "pairs": n}
        if n == 0 or n == P:
            row["note"] = "no pair accepted" if n == 0 else "every pair accepted: the two sets are the same"
            result["comparison"].append(row)
            continue
        arms = {"unfiltered": np.arange(n), "filtered": accepted}
        dice: dict[str, list[float]] = {arm: [] for arm in arms}
        iou: dict[str, list[float]] = {arm: [] for arm in arms}
        for s in range(seeds):
            for arm, idx in arms.items():
                images = np.concatenate([real[0], pool_seg[0][idx]])
                masks = np.concatenate([real[1], pool_seg[1][idx]])
                net = train_segnet(images, masks, seed=seed + s, desc=f"curation t={t:g}: {arm}, seed {s}", **seg_kw)
                d, i = dice_iou(predict_masks(net, test[0]), test[1])
                dice[arm].append(float(d.mean()))
                iou[arm].append(float(i.mean()))
        row.update({
            "fidelity": {arm: float(scores[idx].mean()) for arm, idx in arms.items()},
            **{arm: {"dice": mean_std(dice[arm]), "iou": mean_std(iou[arm])} for arm in arms},
            "difference": {"dice": mean_std(np.subtract(dice["filtered"], dice["unfiltered"])),
                           "iou": mean_std(np.subtract(iou["filtered"], iou["unfiltered"]))},
            "filtered_minus_real": {"dice": mean_std(np.subtract(dice["filtered"], list(real_dice)[:seeds]))},
        })
        logger.info("curation at %.2f: %d pairs, filtered - unfiltered Dice %+.4f", t, n,
                    row["difference"]["dice"]["mean"])
        result["comparison"].append(row)
    return result
