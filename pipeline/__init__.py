"""Dataset curation by training dynamics (STM): ingest, scoring, policies, manifests."""
