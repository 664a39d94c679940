"""puffer: vector, full-text and hybrid search whose only state is a bucket."""

from puffer_cli.db import DB, connect
from puffer_cli.errors import PufferError

__version__ = "0.1.0"
__all__ = ["connect", "DB", "PufferError", "__version__"]
