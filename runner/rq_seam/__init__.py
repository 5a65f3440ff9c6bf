"""Every use of RQ's private names, key formats and payload format, in one place."""
