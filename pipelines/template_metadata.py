"""``python -m pipelines.template_metadata --write|--check``: regenerate or check the templates.

The command stays here, where users and Cloud Build call it; the code is
:mod:`pipelines.flex_template.metadata`.
"""

import logging
import sys

from pipelines.flex_template.metadata import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
