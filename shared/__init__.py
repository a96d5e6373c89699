"""cosmo-har shared library: data, encoders, heads, losses and training loops.

Imported by both the cloud and the edge apps. Must stay within the Jetson TX2 stack
(Python 3.6, torch 1.10, numpy 1.19) and must do no I/O at import time.
"""

__version__ = "0.1.0"
