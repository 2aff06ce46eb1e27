"""The HTTP API (FastAPI): device ingest and the clinician API. Routes are thin; logic lives in
plain functions; database errors become HTTP errors only here."""
