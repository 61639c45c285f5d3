"""The verifier: static checks and the emulated concurrent-patching proof (issue 3).

``verify_file(path)`` returns a ``VerifyReport``; ``render`` turns it into
text or JSON.  unicorn, keystone and capstone load only when a file is
verified, never on import.
"""

from ftpatch.verify.core import verify_file
from ftpatch.verify.findings import Finding, Scheme, Severity, SiteResult, VerifyReport

__all__ = ["Finding", "Scheme", "Severity", "SiteResult", "VerifyReport", "verify_file"]
