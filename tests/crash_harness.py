"""`fashion-keras` with the time budget's epoch count fixed, for the crash tests.

The budget measures this machine's speed, so two runs of the same budgeted config may plan
different epochs. The crash tests compare a killed and resumed run with an uninterrupted
one bit for bit, so both must plan the same: the first argument is the number of epochs
`budget.epochs_within` decides, before the warm-up epochs and again after them (so the horizon
moves by the warm-up's epochs). Everything else (the measuring, plan.json, the re-plan, the
cosine horizon) runs as shipped.

    python tests/crash_harness.py EPOCHS train --config ... --output ...
"""

import sys

from fashion_keras import budget

budget.epochs_within = lambda seconds, train_s, fixed_s: int(sys.argv[1])

from fashion_keras.cli import main  # noqa: E402

sys.exit(main(sys.argv[2:]))
