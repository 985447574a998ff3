"""The HTTP surface: FastAPI routes, the chat page, and the map from session IDs to actors."""
