"""The DLU core in Amaranth 0.5: shapes, encodings and timing come from :mod:`reference`."""
