"""The quarantine: the one service that changes a held message's state."""
