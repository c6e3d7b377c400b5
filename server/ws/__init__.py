"""WebSocket protocol: endpoint, per-connection budgets, frames and client commands."""
