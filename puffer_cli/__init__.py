"""puffer: vector, full-text and hybrid search whose only state is a bucket."""

from puffer_cli.db import DB, AsyncDB, connect, connect_async
from puffer_cli.errors import PufferError

__version__ = "0.1.0"
__all__ = ["connect", "connect_async", "DB", "AsyncDB", "PufferError", "__version__"]
