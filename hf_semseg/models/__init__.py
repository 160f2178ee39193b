"""The portable model layer: one flat folder, laid out as a Hub repository with remote code (see README.md here)."""
