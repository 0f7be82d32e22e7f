import sys
from pathlib import Path

# let tests import helper modules that live next to them (bad_inputs, killable_run)
sys.path.insert(0, str(Path(__file__).resolve().parent))
