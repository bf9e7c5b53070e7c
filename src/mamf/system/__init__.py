"""Infrastructure every layer may use: errors, atomic files, locks, progress, memory and float modes."""
