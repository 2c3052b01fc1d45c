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

The metrics are :mod:`fpi.metrics`; measuring a bundle on labelled turns is
:func:`fpi.evaluate.evaluate`.
"""

from __future__ import annotations

import os

# LightGBM's OpenMP threads busy-wait between parallel regions by default; on a shared
# machine (CI, several jobs on 2 cores) that spinning made training ~8x slower in our
# measurements. Passive waiting costs nothing when the cores are free. It must be set
# before libgomp loads (with lightgbm, imported by the modules below); a user's own
# setting wins. (The fpi executable sets it too: fpi.lightgbm_import.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fpi.model.bundle import ModelBundle, load_bundle, save
from fpi.model.training import FitOptions, TrainResult, fit, train

__all__ = ["FitOptions", "ModelBundle", "TrainResult", "fit", "load_bundle", "save", "train"]
