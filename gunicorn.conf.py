"""gunicorn reads this file from the working folder: the settings are api/gunicorn_config.py's.

gunicorn loads it before it puts the working folder on sys.path, so put the repository there.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from api.gunicorn_config import *  # noqa: E402, F403
