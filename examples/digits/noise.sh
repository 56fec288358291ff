#!/bin/sh
# Label noise on scikit-learn's digits (issue 9, examples/digits/README.md): the datasets
# with 0%, 10% and 30% of the training labels flipped (flip seed 0) and one clean held-out
# split, then the three grids noise-{0,10,30}.toml (Standard, STM and STM with the noise
# guard, 5 seeds, 8 epochs each) into experiments/digits-noise-{0,10,30}/. Run it from the
# checkout with the project's environment active (`python` with torch and scikit-learn,
# and `stm`); about 7 minutes per grid on two cores. Running it again skips finished runs.
set -eu
DATA=/tmp/stm-digits-noise
HELD_OUT="--held-out $DATA/held-out.parquet --group-by noise"
python examples/digits/make_dataset.py "$DATA/noise-0.parquet" --flip 0 $HELD_OUT
python examples/digits/make_dataset.py "$DATA/noise-10.parquet" --flip 0.1 $HELD_OUT
python examples/digits/make_dataset.py "$DATA/noise-30.parquet" --flip 0.3 $HELD_OUT
for percent in 0 10 30; do
    stm experiment "examples/digits/noise-$percent.toml" \
        --out "experiments/digits-noise-$percent" --jobs 2
done
