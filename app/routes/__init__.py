"""HTTP layer: JSON API under /api/v1 (routes/api) and Jinja2 pages (routes/pages)."""
