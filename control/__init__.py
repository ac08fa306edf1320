"""Live control of a disk that a server (``vdisk serve``) or a mount (``vdisk mount``) holds open.

The process that holds a disk's writer lock listens on a unix socket beside
the disk, ``DISK/control.sock`` (mode 0600); the CLI notices it and sends its
commands there instead of opening the disk itself.

* :mod:`.protocol` - the wire format (JSON lines, versioned; field tables).
* :mod:`.server` - :class:`~vdisk.control.server.ControlServer`, run by each
  front end in its serving process.
* :mod:`.client` - :func:`~vdisk.control.client.find_server` and a proxy with
  the method names of :class:`vdisk.Disk`.
* :mod:`.unixsock` - unix socket paths longer than ``sockaddr_un`` allows.
"""
