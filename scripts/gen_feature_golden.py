"""Regenerate tests/golden/features_2k.parquet: feature values on a fixed simulated night.

    python scripts/gen_feature_golden.py --write

The golden pins the feature values so a faster implementation of fpi.features can be
checked against the one that wrote it (tests/test_features_golden.py). Only regenerate it
on purpose, when a feature's definition changes (not to make a speed-up pass): without
``--write`` the script only reports how the current code differs from the stored file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from fpi.features import RAW_COLUMNS, build_features
from fpi.simulate import simulate_frame

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden" / "features_2k.parquet"
TURNS, SEED, PROFILE = 2_000, 20261129, "asr_farfield"


def golden_input() -> pl.DataFrame:
    """The simulated turns the golden is computed from (fixed seed and profile)."""
    return simulate_frame(TURNS, seed=SEED, profile=PROFILE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="overwrite the stored golden")
    a = ap.parse_args()
    # the raw inputs of learned features are not feature values (the test drops them too)
    feats = build_features(golden_input()).drop(RAW_COLUMNS)
    if a.write:
        feats.write_parquet(GOLDEN, compression="zstd", statistics=False)
        print(f"wrote {GOLDEN} ({feats.height} rows, {feats.width} columns)")
        return
    old = pl.read_parquet(GOLDEN)
    same = old.equals(feats, null_equal=True)
    print(f"{GOLDEN}: {'identical' if same else 'DIFFERS from the current code'}")


if __name__ == "__main__":
    main()
