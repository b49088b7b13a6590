"""What an honest-but-curious server can recover from what a client sends (docs/privacy-evidence.md)."""
