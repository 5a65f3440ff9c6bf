"""`python -m runner ...`"""

from runner.cli.main import main

main()
