"""``python -m pipelines.demo``: the local end-to-end demo (see
:mod:`pipelines.demo.walkthrough`)."""

from pipelines.demo.walkthrough import run

if __name__ == "__main__":
    run()
