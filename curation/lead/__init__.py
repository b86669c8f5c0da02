"""Leads' tools: dashboard, agreement statistics, adjudication, the safety queue."""
