"""Imported only by the forkserver process pluq's pool starts (its preload list).

A SIGTERM sent to the whole process group (systemd's default, `kill -TERM -PGID`) must not
kill the server that forks replacement children: the supervisor decides what a SIGTERM
means (a graceful drain), and the server still exits when the supervisor does.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
