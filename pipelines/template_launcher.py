"""``python -m pipelines.template_launcher run NAME --parameters ...``: launch a Flex Template.

The command stays here, where users call it; the code is :mod:`pipelines.flex_template.launcher`.
"""

import logging
import sys

from pipelines.flex_template.launcher import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sys.exit(main())
