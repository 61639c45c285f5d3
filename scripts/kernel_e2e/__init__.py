"""The kernel e2e's judgement: what scripts/kernel-e2e.sh prints as a verdict.

The script builds and boots the kernels; everything that decides whether
they passed is here, as code that tests call on real inputs:

    bootlog.py   one serial log, read once into a typed BootLog
    rules.py     the judge's rules: BootLog (+ qemu's exit status) -> Verdict
    records.py   the independent records checker of linked images and modules
                 (pyelftools and binutils; never ftpatch's own reader)
    summary.py   summary.json, one typed key at a time, written with json
    w1.py        the compiler warnings of a W=1 log, and those the series adds
    mail.py      the subject and text of a patch mail, for scripts/make-series.sh
    __main__.py  the command line the script calls; the only place that
                 prints or chooses an exit status

Run as ``python -m kernel_e2e`` with ``scripts/`` on the path.
"""
