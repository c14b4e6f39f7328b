"""`python -m heartjax.evaluate`: score a folder of predictions against ground truth (see heartjax.eval.evaluate)."""

import sys

from heartjax.eval.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
