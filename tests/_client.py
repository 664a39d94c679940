"""The installed official ``turbopuffer`` client: its version, and calls that work on every
tested version (3.x, and 2.8 in ``nox -s client28``)."""

from __future__ import annotations

import inspect

import turbopuffer
from turbopuffer.resources.namespaces import NamespacesResource

VERSION = turbopuffer.__version__
MAJOR = int(VERSION.split(".")[0])


def client_has(method: str, param: str = "") -> bool:
    """Whether this client's ``namespace(n).<method>`` exists (and takes ``param``)."""
    fn = getattr(NamespacesResource, method, None)
    return fn is not None and (not param or param in inspect.signature(fn).parameters)


def call(ns, method: str, **params):
    """``ns.<method>(**params)``; a parameter this client version does not have (one newer
    clients added) goes in ``extra_body`` instead, so the server receives the same request body."""
    sig = inspect.signature(getattr(NamespacesResource, method)).parameters
    known = {k: v for k, v in params.items() if k in sig}
    extra = {k: v for k, v in params.items() if k not in sig}
    return getattr(ns, method)(**known, **({"extra_body": extra} if extra else {}))
