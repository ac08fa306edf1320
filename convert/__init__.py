"""Redo-log chains in and out: qemu images converted into a container, exported back."""
