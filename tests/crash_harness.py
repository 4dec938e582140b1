"""`fashion-keras` with the time budget's epoch count fixed, for the crash tests.

The budget measures this machine's speed, so two runs of the same budgeted config may plan
different epochs. The crash tests compare a killed and resumed run with an uninterrupted
one bit for bit, so both must plan the same: the first argument is the number of epochs
`budget.epochs_within` decides, before the warm-up epochs and again after them (so the horizon
moves by the warm-up's epochs); the re-plans after later epochs keep that end (a resumed run
does not plan again, so a move after the kill would part the two). Everything else (the
measuring, plan.json, the re-plans, the cosine horizon) runs as shipped.

    python tests/crash_harness.py EPOCHS train --config ... --output ...
"""

import itertools
import sys

from fashion_keras import budget

PLANS = itertools.count()  # 0: before the warm-up; 1: after it; n: after epoch n
budget.epochs_within = lambda seconds, train_s, fixed_s: int(sys.argv[1]) - max(0, next(PLANS) - 1)

from fashion_keras.cli import main  # noqa: E402

sys.exit(main(sys.argv[2:]))
