"""Run folders, experiments, tuning, launchers and exports: measurements become rows."""
