"""python -m ckptio."""

from .cli.main import console

console()
