"""HTTP: operations (REST + WebSocket `request`), middleware and HTTP-only handlers."""
