"""The four methods. Each only says how training data arrives and how a test task is adapted to."""
