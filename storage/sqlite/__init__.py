"""The SQLite backends of the stores: one file holds the ledger, admin state and learned state."""
