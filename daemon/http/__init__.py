"""The HTTP API (docs/http.md) as an ASGI app, one module per concern; :func:`daemon.http.app.build_app` assembles it.

Errors are ``{"code": K, "detail": M}`` with a 4xx/5xx status and never a stack trace.
"""
