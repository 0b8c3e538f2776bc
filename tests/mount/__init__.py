"""Real FUSE mounts through /dev/fuse: the daemon in a subprocess, driven with ordinary calls and tools."""
