"""Analyst access: the HTTP API, the Call Logs page, KPIs and per-account API keys.

Entry points: `pipeline.api.app.create_app` (the FastAPI app) and, for the command line,
`pipeline.api.cli.add_serve_parser` / `add_keys_parser`.
"""
