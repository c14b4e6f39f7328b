"""`python -m heartjax.phantom`: write the built-in synthetic whole-heart phantom (see heartjax.data.phantom)."""

import sys

from heartjax.data.phantom import main

if __name__ == "__main__":
    sys.exit(main())
