"""Storage: plain rows (model.py), the schema and its migrations, the Store and its
repositories by concern, and the layered caches. Imports nothing of flowdeck above it."""
