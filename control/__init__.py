"""Live control of a disk that a server (``vdisk serve``) or a mount (``vdisk mount``) holds open.

The process that holds a disk's writer lock listens on a unix socket beside
the disk; the CLI notices it and sends its commands there instead of opening
the disk itself.
"""
