"""Helpers of ./backup.sh and ./restore.sh that need Python (run inside helper containers)."""
