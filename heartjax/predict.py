"""`python -m heartjax.predict`: segment scans with a trained run's models (see heartjax.serve.predict)."""

import sys

from heartjax.serve.predict import main

if __name__ == "__main__":
    sys.exit(main())
