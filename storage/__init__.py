"""Ground floor: domain model, errors, the SQLite-backed errand queue."""
