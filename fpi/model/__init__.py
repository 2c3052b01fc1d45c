"""The failure-point model: fit it, keep it as a bundle, apply it.

    training.py     fit(turns) -> ModelBundle in memory; train = fit + save
    bundle.py       ModelBundle (boosters, calibration, features, manifest, file texts);
                    save(bundle, dir) and load_bundle(dir)
    manifest.py     the manifest's schema, file checksums and the bundle hash
    crossfit.py     folds by session, parameter candidates, fold and final fits
    calibration.py  temperature plus per-class bias on the raw margins
    baselines.py    the first-bad-stage rule the model must beat
    learned.py      features learned from the data (text models, ``extra`` numbers)
    vocab.py        learned counts of the training turns' words and ER mentions
    compiled.py     the compiled predictor (identical margins, faster than LightGBM)
    lightgbm_core.py  LightGBM loaded lean (no scikit-learn, no pandas) and OpenMP set
                    to wait passively; every module takes ``lgb`` from it

The metrics are :mod:`fpi.metrics`; measuring a bundle on labelled turns is
:func:`fpi.evaluate.evaluate`.
"""

from __future__ import annotations

from fpi.model.bundle import ModelBundle, load_bundle, save
from fpi.model.training import FitOptions, TrainResult, fit, train

__all__ = ["FitOptions", "ModelBundle", "TrainResult", "fit", "load_bundle", "save", "train"]
