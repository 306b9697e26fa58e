"""Reading the write-ahead log: logical decoding, automatic invalidation, change-stream
history and their setup."""
