"""Command-line interface: one module per command, wired up in main.py."""
