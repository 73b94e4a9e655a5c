"""``python -m vggdeploy``: the same as the ``vggdeploy`` console script."""

from vggdeploy.cli import main

main()
