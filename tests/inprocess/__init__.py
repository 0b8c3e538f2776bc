"""The file system in-process: S3Operations' handlers called directly, no kernel (see conftest.py here)."""
