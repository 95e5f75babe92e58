"""VM suite: tests run inside vmrun guests (a package so its file names may repeat tests/live's)."""
