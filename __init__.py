"""ocrl: single-file offline and continuous-control RL algorithms on a small shared library."""
