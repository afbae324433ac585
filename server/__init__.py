"""The serving path: api → serving → one sampling loop → engine / billing."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("t2serve")
except PackageNotFoundError:  # a checkout run without being installed
    __version__ = "0+unknown"
