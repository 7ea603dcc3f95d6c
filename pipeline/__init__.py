"""cdrpipe: SIP call events -> rated CDRs in ClickHouse.

Some modules may run compiled (setup.py); `_accel` makes sure a compiled module is only ever
used while its source is the one it was built from.
"""

from pipeline import _accel

_accel.install()
