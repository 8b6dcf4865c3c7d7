"""Measured correctness on the real photo set (skipped when ../shared/data/hotdog-mini is absent).

One forward pass over the 250 photos at 224 px (memoised in hotdog.models) feeds every figure:
the top-5 hit rate of the ImageNet hot dog class; the zero-shot heads are scored by the same
Predictor that serves finished runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from hotdog import imagenet, models

SRC = "efficientnet_lite0"


@pytest.fixture(scope="module")
def splits(hotdog_mini, tmp_path_factory):
    from hotdog.data import load_splits

    with pytest.MonkeyPatch.context() as mp:  # converted weights go to a temp home
        mp.setenv("HOTDOG_HOME", str(tmp_path_factory.mktemp("home")))
        s = load_splits(hotdog_mini)
        assert s.classes == ["hotdog", "not-hotdog"]
        yield s


def test_top5_contains_hotdog_for_most_hotdog_photos(splits):
    hot = imagenet.class_index("hotdog")
    label = splits.classes.index("hotdog")
    hits = []
    for items in (splits.train, splits.test):
        _, logits, labels = models.items_forward(SRC, items)
        top5 = np.argsort(-logits, axis=1)[:, :5]
        hits.extend((top5[labels == label] == hot).any(axis=1))
    frac = float(np.mean(hits))
    print(f"\nEfficientNet-Lite0 top-5 contains '{imagenet.short_name(hot)}' for {frac:.3f} of {len(hits)} hot dog photos")
    assert len(hits) == 125
    assert frac > 0.5  # a correct port scores above 0.5, a wrong normalisation about 0.2


def _accuracy(net, splits) -> float:
    from hotdog.predict import Predictor

    pred = Predictor(net, splits.classes, models.get_spec(SRC).preprocess, SRC)
    out = pred.predict([p for p, _ in splits.test])
    return float(np.mean([o.label == splits.classes[y] for o, (_, y) in zip(out, splits.test)]))


def test_zero_shot_head_fitted_on_train_beats_the_one_without_data(splits):
    fitted = models.build_finetune(SRC, 2, init_output_from_imagenet=True, class_names=splits.classes,
                                   init_items=splits.train)
    naive = models.build_finetune(SRC, 2, init_output_from_imagenet=True, class_names=splits.classes)
    acc_fitted, acc_naive = _accuracy(fitted, splits), _accuracy(naive, splits)
    print(f"\nzero-shot test accuracy: head fitted on train {acc_fitted:.3f} "
          f"(train {fitted._hotdog_head_init.train_accuracy:.3f}), head without data {acc_naive:.3f}")
    assert acc_fitted >= 0.85
    assert acc_naive >= 0.6
    assert acc_fitted > acc_naive
