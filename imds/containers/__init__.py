"""Container credential endpoints (stand-in on branch envcmd until the lead's lands)."""
