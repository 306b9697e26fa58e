"""Leaves both sides use: errors, wire codec, keys, strategies, request shapes, single-
flight, signing, request ids. They import nothing above them."""
