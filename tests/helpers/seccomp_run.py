"""Run a command under a seccomp filter that refuses systemd's ``@clock`` system calls except the names given,
as the unit's ``SystemCallFilter=~@privileged`` followed by ``SystemCallFilter=<names>`` does (with
``SystemCallErrorNumber=EPERM``). Runs with the distribution's Python and its libseccomp binding (python3-seccomp);
the filter survives the exec of the command.

    /usr/bin/python3 tests/helpers/seccomp_run.py adjtimex,clock_adjtime -- python -c '...'
"""

from __future__ import annotations

import errno
import os
import sys

import seccomp  # type: ignore[import-not-found]

#: systemd's @clock group (src/shared/seccomp-util.c): the calls that read or change the system clock.
CLOCK = ("adjtimex", "clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64", "settimeofday")


def main() -> None:
    allowed = set(filter(None, sys.argv[1].split(",")))
    command = sys.argv[sys.argv.index("--") + 1:]
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in CLOCK:
        if name in allowed:
            continue
        try:
            f.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (RuntimeError, ValueError):
            pass  # not a call of this architecture (the *64 ones exist on 32-bit ARM)
    f.load()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
