"""cosmo-har cloud app: the registry daemon, stage-1 pretraining, quality scoring, IMU-text alignment.

Needs Python >= 3.10 (the edge tier, ``edge`` and ``shared``, runs on 3.6; see pyproject.toml)."""
import sys

if sys.version_info < (3, 10):
    sys.exit("cloud-server needs Python >= 3.10 (this is {}.{}); on an edge device run edge-agent".format(
        *sys.version_info[:2]))
