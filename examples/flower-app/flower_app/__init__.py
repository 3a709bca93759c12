"""A small ordinary Flower app that adopts e3sfc's 3SFC compression."""
