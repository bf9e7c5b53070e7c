"""Image folders -> an indexed dataset over a uint8 image cache."""
