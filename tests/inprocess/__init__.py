"""The file system in-process: FuseOperations' handlers called directly, no kernel (see conftest.py here)."""
