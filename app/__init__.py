"""rlhf-studio web service: FastAPI pages and JSON API over the database (never imports torch)."""
