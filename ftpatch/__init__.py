"""ftpatch: build-time rewriting of arm64 ftrace patch sites."""

__version__ = "0.1.0"
